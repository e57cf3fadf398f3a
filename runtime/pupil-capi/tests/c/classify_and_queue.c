/* A native app's use of pupil's C ABI: load the shipped student, classify digits the app
   holds, learn from the labels its user gave, queue the refined model as a signed update.

   usage: classify_and_queue MODEL DIGITS LABELS DEVICE_DIR
   DIGITS: n * inputs little-endian floats; LABELS: n bytes. Prints one line per step. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "pupil.h"

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, pupil_last_error());
    return 1;
}

static void *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(*len);
    if (buf && fread(buf, 1, *len, f) != *len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL DIGITS LABELS DEVICE_DIR\n", argv[0]);
        return 2;
    }
    PupilClassifier *c = pupil_classifier_load(argv[1], "cpu");
    if (!c) return fail("load");
    size_t inputs = pupil_classifier_inputs(c), classes = pupil_classifier_classes(c);
    size_t digit_bytes, n_labels;
    float *digits = read_all(argv[2], &digit_bytes);
    uint8_t *label_bytes = read_all(argv[3], &n_labels);
    if (!digits || !label_bytes) {
        fprintf(stderr, "cannot read the digits or labels\n");
        return 2;
    }
    size_t n = digit_bytes / sizeof(float) / inputs;
    float *probs = malloc(n * classes * sizeof(float));
    uint32_t *labels = malloc(n * sizeof(uint32_t));
    if (pupil_classifier_classify(c, digits, n * inputs, probs, n * classes) != 0)
        return fail("classify");
    size_t correct = 0;
    printf("predictions");
    for (size_t i = 0; i < n; i++) {
        size_t best = 0;
        for (size_t k = 1; k < classes; k++)
            if (probs[i * classes + k] > probs[i * classes + best]) best = k;
        correct += best == label_bytes[i];
        labels[i] = label_bytes[i];
        printf(" %zu", best);
    }
    printf("\ncorrect %zu of %zu\n", correct, n);
    /* A bad call fails with a reason, and nothing else changes. */
    if (pupil_classifier_classify(c, digits, inputs + 1, probs, classes) == 0) {
        fprintf(stderr, "a partial example was accepted\n");
        return 1;
    }
    printf("refused: %s\n", pupil_last_error());
    float loss = 0;
    if (pupil_classifier_train_step(c, digits, n * inputs, labels, n, 1e-3f, &loss) != 0)
        return fail("train_step");
    printf("loss %.6f\n", loss);
    if (pupil_device_init(argv[4], "c-app") != 0) return fail("device_init");
    uint64_t seq = 0;
    if (pupil_classifier_queue_update(c, argv[4], n, &seq) != 0) return fail("queue_update");
    printf("queued %llu\n", (unsigned long long)seq);
    pupil_classifier_free(c);
    free(digits);
    free(label_bytes);
    free(probs);
    free(labels);
    return 0;
}
