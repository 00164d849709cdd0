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
