//! Chat prompts from a model's stored chat template. Only the ChatML form is implemented (a
//! Jinja engine is not): a template that contains `<|im_start|>` is rendered as ChatML, with
//! the default system message the template inserts when one is written in it (SmolLM2:
//! "You are a helpful AI assistant named SmolLM, trained by Hugging Face").

use crate::error::{Error, Result};

const START: &str = "<|im_start|>";
const END: &str = "<|im_end|>";

/// The prompt for one user message and the assistant's turn, as `apply_chat_template` with
/// `add_generation_prompt` renders the ChatML `template`.
pub fn chat_prompt(template: &str, user: &str) -> Result<String> {
    if !template.contains(START) {
        return Err(Error::NotSupported {
            op: "chat template",
            detail: "only ChatML templates (with <|im_start|>) are implemented; pass the formatted prompt without --chat".into(),
        });
    }
    let system = default_system(template)
        .map(|s| format!("{START}system\n{s}{END}\n"))
        .unwrap_or_default();
    Ok(format!(
        "{system}{START}user\n{user}{END}\n{START}assistant\n"
    ))
}

/// The literal system message of `<|im_start|>system\n...<|im_end|>` in `template`, if any.
fn default_system(template: &str) -> Option<&str> {
    let head = format!("{START}system\n");
    let at = template.find(&head)? + head.len();
    let rest = &template[at..];
    rest.find(END).map(|end| &rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_with_and_without_a_default_system_message() {
        let smol = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        assert_eq!(
            chat_prompt(smol, "Hi").unwrap(),
            "<|im_start|>system\nYou are SmolLM<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let plain =
            "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'}}";
        assert_eq!(
            chat_prompt(plain, "Hi").unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(chat_prompt("[INST] {{ m }} [/INST]", "Hi").is_err());
    }
}
