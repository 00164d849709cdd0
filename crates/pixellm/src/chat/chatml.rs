//! The ChatML conversation format of SmolLM2-Instruct, exactly as its
//! `tokenizer.chat_template` (GGUF metadata; `chat_template` of `tokenizer_config.json`)
//! renders it:
//!
//! ```jinja
//! {% for message in messages %}
//!   {% if loop.first and messages[0]['role'] != 'system' %}
//!     {{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}
//!   {% endif %}
//!   {{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
//! {% endfor %}
//! {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
//! ```
//!
//! (The template is one line; it is broken up here for reading and has no whitespace of
//! its own.) Encode the result with [`super::byte_bpe::ByteBpe::encode`], which maps
//! `<|im_start|>`/`<|im_end|>` to their ids; no BOS is added.

/// Opens a turn (id 1 in SmolLM2).
pub const IM_START: &str = "<|im_start|>";
/// Closes a turn (id 2 in SmolLM2): generation stops when the model emits it.
pub const IM_END: &str = "<|im_end|>";
/// The system prompt SmolLM2's template inserts when the conversation has none.
pub const SMOLLM2_DEFAULT_SYSTEM: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions to the model (`system`).
    System,
    /// The person (`user`).
    User,
    /// The model (`assistant`).
    Assistant,
}

impl Role {
    /// The role name written after `<|im_start|>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// Renders SmolLM2's chat template for the conversation `system` (as a leading system
/// message, when given) followed by `messages`, then opens the assistant's turn when
/// `add_generation_prompt` is set.
///
/// As in the template, the default system prompt ([`SMOLLM2_DEFAULT_SYSTEM`]) is
/// inserted only when the conversation is non-empty and does not start with a system
/// message (so `system: None` with `messages[0]` a [`Role::System`] turn uses that turn,
/// and `Some("")` gives an empty system turn, not the default). Contents are inserted
/// verbatim: text that spells `<|im_end|>` becomes that token when encoded with
/// `ByteBpe::encode` (as with `tokenizers`); encode such user text separately with
/// `ByteBpe::encode_ordinary` if that matters.
pub fn chatml_prompt(
    system: Option<&str>,
    messages: &[(Role, String)],
    add_generation_prompt: bool,
) -> String {
    let turns = system
        .map(|s| (Role::System, s))
        .into_iter()
        .chain(messages.iter().map(|(r, c)| (*r, c.as_str())));
    let mut out = String::new();
    for (i, (role, content)) in turns.enumerate() {
        if i == 0 && role != Role::System {
            push_turn(&mut out, Role::System, SMOLLM2_DEFAULT_SYSTEM);
        }
        push_turn(&mut out, role, content);
    }
    if add_generation_prompt {
        out.push_str(IM_START);
        out.push_str(Role::Assistant.as_str());
        out.push('\n');
    }
    out
}

fn push_turn(out: &mut String, role: Role, content: &str) {
    out.push_str(IM_START);
    out.push_str(role.as_str());
    out.push('\n');
    out.push_str(content);
    out.push_str(IM_END);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::byte_bpe::ByteBpe;
    use serde_json::Value;
    use std::path::Path;

    fn fixture(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/smollm2")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn smollm() -> ByteBpe {
        ByteBpe::from_tokenizer_json(&fixture("tokenizer.json"), "tokenizer.json").unwrap()
    }

    fn turns(list: &[(Role, &str)]) -> Vec<(Role, String)> {
        list.iter().map(|(r, c)| (*r, c.to_string())).collect()
    }

    #[test]
    fn reference_prompt_and_ids() {
        let v: Value = serde_json::from_slice(&fixture("reference_logits.json")).unwrap();
        let prompt = chatml_prompt(
            None,
            &turns(&[(Role::User, "What is the capital of France?")]),
            true,
        );
        assert_eq!(prompt, v["prompt"].as_str().unwrap());
        let want: Vec<i64> = v["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(smollm().encode(&prompt), want);
    }

    /// Expected strings rendered by jinja2 (sandboxed, trim_blocks, lstrip_blocks, as
    /// transformers does) from the GGUF's `tokenizer.chat_template`.
    #[test]
    fn matches_the_jinja_template() {
        let d = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
                 Hugging Face<|im_end|>\n";
        let multi = turns(&[
            (Role::User, "Hi"),
            (Role::Assistant, "Hello!"),
            (Role::User, "2+2?"),
        ]);
        let multi_text =
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n\
             <|im_start|>assistant\n";
        assert_eq!(chatml_prompt(Some("Be brief."), &multi, true), multi_text);
        // The same conversation with the system turn inside `messages`.
        let mut with_system = turns(&[(Role::System, "Be brief.")]);
        with_system.extend(multi.iter().cloned());
        assert_eq!(chatml_prompt(None, &with_system, true), multi_text);
        assert_eq!(
            chatml_prompt(None, &multi[..2], false),
            format!("{d}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n")
        );
        assert_eq!(
            chatml_prompt(Some(""), &turns(&[(Role::User, "x")]), false),
            "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nx<|im_end|>\n"
        );
        // No messages: the template's loop never runs, so no default system turn.
        assert_eq!(chatml_prompt(None, &[], true), "<|im_start|>assistant\n");
        assert_eq!(chatml_prompt(None, &[], false), "");
        assert_eq!(
            chatml_prompt(None, &turns(&[(Role::Assistant, "I start.")]), true),
            format!("{d}<|im_start|>assistant\nI start.<|im_end|>\n<|im_start|>assistant\n")
        );
        // Ids from Python `tokenizers` for the multi-turn prompt.
        assert_eq!(
            smollm().encode(multi_text),
            [
                1, 9690, 198, 6077, 5453, 30, 2, 198, 1, 4093, 198, 26843, 2, 198, 1, 520, 9531,
                198, 19556, 17, 2, 198, 1, 4093, 198, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198
            ]
        );
    }
}
