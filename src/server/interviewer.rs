//! The interviewer's side of the conversation.

use crate::store::{Message, Role};

/// Writes the interviewer's turns; swap in an LLM-backed one in a real service.
pub trait Interviewer: Send + Sync + 'static {
    /// The first question of a new session.
    fn opening(&self) -> String;
    /// The answer to the user's latest message; `history` ends with it.
    fn reply(&self, history: &[Message]) -> String;
    /// A running summary of the session.
    fn summarize(&self, history: &[Message]) -> String;
    /// A draft composed from the session, when the client sends none.
    fn compose_draft(&self, history: &[Message]) -> String {
        let answers: Vec<&str> = history
            .iter()
            .filter(|m| m.role == Role::User)
            .map(|m| m.text.trim())
            .filter(|t| !t.is_empty())
            .collect();
        if answers.is_empty() {
            return "No answers yet.".to_string();
        }
        answers.join("\n\n")
    }
}

/// A built-in interviewer that follows a fixed script and needs no network.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScriptedInterviewer;

const QUESTIONS: &[&str] = &[
    "Tell me about a project you are proud of.",
    "What was the hardest problem in it, and how did you solve it?",
    "What would you do differently today?",
    "How did you work with the rest of the team?",
    "What are you looking to learn next?",
];

fn excerpt(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().take(8).collect();
    let mut s = words.join(" ");
    if text.split_whitespace().count() > 8 {
        s.push('…');
    }
    s
}

impl Interviewer for ScriptedInterviewer {
    fn opening(&self) -> String {
        format!("Welcome! {}", QUESTIONS[0])
    }

    fn reply(&self, history: &[Message]) -> String {
        let answers = history.iter().filter(|m| m.role == Role::User).count();
        let last = history
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| excerpt(&m.text))
            .unwrap_or_default();
        match QUESTIONS.get(answers) {
            Some(next) if !last.is_empty() => format!("You said \"{last}\". {next}"),
            Some(next) => (*next).to_string(),
            None => format!(
                "Thank you — that was answer {answers}. Anything else you would like to add?"
            ),
        }
    }

    fn summarize(&self, history: &[Message]) -> String {
        let answers: Vec<String> = history
            .iter()
            .filter(|m| m.role == Role::User)
            .map(|m| excerpt(&m.text))
            .collect();
        let mut s = format!("{} answers so far", answers.len());
        if let Some(first) = answers.first() {
            s.push_str(&format!("; started with \"{first}\""));
        }
        s.chars().take(500).collect()
    }
}
