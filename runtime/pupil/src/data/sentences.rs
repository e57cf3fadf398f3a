//! Unlabelled sentences from plain text, for training and checking sentence encoders: the
//! text is split after `.`, `!` or `?` followed by white space (line breaks inside a
//! sentence, as in verse, are joined), and a held-out part is taken from the end of a text so
//! that it comes from a different part than what is trained on.

use std::collections::HashSet;

/// The sentences of `text` with at least `min_words` words each, white space collapsed.
pub fn sentences(text: &str, min_words: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    let mut start = 0;
    for (i, w) in words.iter().enumerate() {
        let end = i + 1 == words.len() || ends_sentence(w);
        if end {
            if i + 1 - start >= min_words.max(1) {
                out.push(words[start..=i].join(" "));
            }
            start = i + 1;
        }
    }
    out
}

/// Whether a word ends a sentence: its last character other than closing quotes and
/// brackets is `.`, `!` or `?`.
fn ends_sentence(word: &str) -> bool {
    word.trim_end_matches(['"', '\'', ')', ']', '”', '’'])
        .ends_with(['.', '!', '?'])
}

/// Splits `sentences` (in text order) into a training part and the last `held_out` fraction;
/// held-out sentences that also occur in the training part are dropped, so none of them is
/// ever trained on.
pub fn split_tail(sentences: &[String], held_out: f64) -> (Vec<String>, Vec<String>) {
    let keep = (sentences.len() as f64 * (1.0 - held_out.clamp(0.0, 1.0))).round() as usize;
    let (train, tail) = sentences.split_at(keep.min(sentences.len()));
    let seen: HashSet<&String> = train.iter().collect();
    let tail = tail.iter().filter(|s| !seen.contains(s)).cloned().collect();
    (train.to_vec(), tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_after_end_punctuation_and_joins_lines() {
        let text = "Ber.\nWho's there?\n\nFran. Nay, answer me:\nstand, and unfold yourself.\n\"Long live the king!\" He said (quietly.) Tail without end";
        assert_eq!(
            sentences(text, 1),
            vec![
                "Ber.",
                "Who's there?",
                "Fran.",
                "Nay, answer me: stand, and unfold yourself.",
                "\"Long live the king!\"",
                "He said (quietly.)",
                "Tail without end",
            ]
        );
        assert_eq!(
            sentences(text, 3),
            vec![
                "Nay, answer me: stand, and unfold yourself.",
                "\"Long live the king!\"",
                "He said (quietly.)",
                "Tail without end",
            ]
        );
        assert!(sentences("  \n ", 1).is_empty());
    }

    #[test]
    fn held_out_tail_never_repeats_a_training_sentence() {
        let s: Vec<String> = ["a", "b", "c", "d", "a", "e"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        let (train, held) = split_tail(&s, 0.5);
        assert_eq!(train, vec!["a", "b", "c"]);
        assert_eq!(held, vec!["d", "e"]);
        let (train, held) = split_tail(&s, 0.0);
        assert_eq!((train.len(), held.len()), (6, 0));
    }
}
