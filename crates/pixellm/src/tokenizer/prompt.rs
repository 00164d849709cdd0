//! PixelLM prompt construction: the LLaVA `llava_v1` conversation template as used by
//! PixelLM's `chat.py` (`docs/model.md` §4).

/// `conv_llava_v1.system`.
pub const LLAVA_V1_SYSTEM: &str = "A chat between a curious human and an artificial intelligence \
assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";

/// The literal image placeholder; [`super::Tokenizer::encode_with_image`] turns it into
/// [`super::IMAGE_TOKEN_INDEX`].
pub const IMAGE_PLACEHOLDER: &str = "<image>";
/// Added token that opens the image span.
pub const IM_START_TOKEN: &str = "<im_start>";
/// Added token that closes the image span.
pub const IM_END_TOKEN: &str = "<im_end>";
/// `conv_llava_v1.sep2`, appended after an assistant answer.
pub const LLAVA_V1_SEP2: &str = "</s>";

/// The `[SEGk]` token strings for `k = 0..n` (PixelLM uses n = 6: 3 codebook tokens
/// times 2 image scales).
pub fn seg_token_strings(n: usize) -> Vec<String> {
    (0..n).map(|k| format!("[SEG{k}]")).collect()
}

/// The `llava_v1` prompt for one image and one question, exactly as chat.py builds it:
///
/// `{system} USER: <im_start><image><im_end>\n{question} ASSISTANT:`
///
/// With `Some(answer)` (teacher forcing) the assistant turn is filled in:
/// `... ASSISTANT: {answer}</s>`. An empty answer counts as none, because the
/// conversation template tests the message for truthiness.
pub fn llava_v1_prompt(question: &str, answer: Option<&str>) -> String {
    // chat.py: "<image>\n" + question, then "<image>" -> "<im_start><image><im_end>".
    let user = format!("{IM_START_TOKEN}{IMAGE_PLACEHOLDER}{IM_END_TOKEN}\n{question}");
    // SeparatorStyle.TWO: seps = [" ", "</s>"]; a role with an empty message is "ROLE:".
    let mut out = format!("{LLAVA_V1_SYSTEM} USER: {user} ");
    match answer {
        Some(a) if !a.is_empty() => {
            out.push_str("ASSISTANT: ");
            out.push_str(a);
            out.push_str(LLAVA_V1_SEP2);
        }
        _ => out.push_str("ASSISTANT:"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn case(name: &str) -> serde_json::Value {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/conformance/cases")
            .join(name)
            .join("case.json");
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    }

    #[test]
    fn matches_kit_prompts() {
        for name in ["p1_landscape_480x360", "p2_portrait_300x500"] {
            let c = case(name);
            let q = c["question"].as_str().unwrap();
            assert_eq!(llava_v1_prompt(q, None), c["prompt"].as_str().unwrap());
            let tf = &c["teacher_forced"];
            assert_eq!(
                llava_v1_prompt(q, Some(tf["answer"].as_str().unwrap())),
                tf["prompt"].as_str().unwrap()
            );
        }
        assert_eq!(llava_v1_prompt("q", Some("")), llava_v1_prompt("q", None));
        assert_eq!(seg_token_strings(2), ["[SEG0]", "[SEG1]"]);
    }
}
