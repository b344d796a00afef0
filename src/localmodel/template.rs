//! A model's own chat template (`tokenizer.chat_template`, Jinja), rendered
//! with minijinja as Hugging Face's `apply_chat_template` does: `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`, and
//! Python's string methods (minijinja-contrib's pycompat).

use minijinja::{context, Environment, Error, ErrorKind};

/// The ChatML layout, for a file without a template.
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// The template of the file (`None`: ChatML) with its special tokens.
    pub fn new(source: Option<&str>, bos: &str, eos: &str) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.unwrap_or(CHATML).to_string())
            .map_err(|e| format!("the model's chat template does not parse: {e}"))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The prompt text of a system and a user message, ending where the
    /// assistant's reply starts.
    pub fn render(&self, system: &str, user: &str) -> Result<String, String> {
        let messages = vec![
            context! { role => "system", content => system },
            context! { role => "user", content => user },
        ];
        self.env
            .get_template("chat")
            .and_then(|t| {
                t.render(context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => &self.bos,
                    eos_token => &self.eos,
                })
            })
            .map_err(|e| format!("the model's chat template failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2s_template_renders_as_transformers_does() {
        // tokenizer.chat_template of SmolLM2-135M-Instruct's GGUF, verbatim.
        let source = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::new(Some(source), "<|im_start|>", "<|im_end|>").unwrap();
        assert_eq!(
            t.render("Be brief.", "Hi").unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let source = "{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}{% for m in messages %}[{{ m.content.strip().upper() }}]{% endfor %}";
        let t = ChatTemplate::new(Some(source), "", "").unwrap();
        assert_eq!(t.render(" a ", "b").unwrap(), "[A][B]");
        let bad = ChatTemplate::new(Some("{% for %}"), "", "");
        assert!(bad.err().unwrap().contains("does not parse"));
        let raising =
            ChatTemplate::new(Some("{{ raise_exception('no system role') }}"), "", "").unwrap();
        assert!(raising
            .render("a", "b")
            .unwrap_err()
            .contains("no system role"));
    }

    #[test]
    fn a_file_without_a_template_gets_chatml() {
        let t = ChatTemplate::new(None, "", "").unwrap();
        assert_eq!(
            t.render("s", "u").unwrap(),
            "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
