//! The Promela model (`model/cutover.pml`) names exactly the steps the code has
//! (`Step::ALL`): a step added to the code and not to the model, or the
//! reverse, fails here, so the two cannot drift apart silently. Pure Rust: no
//! database, no Spin (scripts/model-check.sh runs the model checker).

use std::collections::BTreeSet;
use std::path::Path;

use interview_store::migrate::Step;

/// What marks a step in the model: `printf("step: <name>\n")` (see the
/// comment at the top of model/cutover.pml).
const MARK: &str = "printf(\"step: ";

/// The step names the model takes, and the lines it could not read.
#[derive(Debug, Default)]
struct ModelSteps {
    names: BTreeSet<String>,
    /// Preprocessor lines this reader does not understand (it knows `#ifdef`,
    /// `#ifndef`, `#else`, `#endif`): the names would be unreliable.
    unreadable: Vec<String>,
}

/// The step names of the real model: the model as Spin checks it without
/// `-D` flags, so every `#ifdef X` region (OLD_ORDER, TRUST_STEP: the
/// variants expected to fail) is left out and every `#ifndef X` kept.
fn model_steps(text: &str) -> ModelSteps {
    let mut steps = ModelSteps::default();
    // One entry per open conditional: whether its current branch is kept.
    let mut kept: Vec<bool> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(directive) = trimmed.strip_prefix('#') {
            let word = directive.split_whitespace().next().unwrap_or("");
            match word {
                "ifdef" => kept.push(false),
                "ifndef" => kept.push(true),
                "else" => match kept.last_mut() {
                    Some(branch) => *branch = !*branch,
                    None => steps
                        .unreadable
                        .push(format!("line {}: #else without #if", n + 1)),
                },
                "endif" => {
                    if kept.pop().is_none() {
                        steps
                            .unreadable
                            .push(format!("line {}: #endif without #if", n + 1));
                    }
                }
                "define" | "undef" | "include" => {}
                _ => steps
                    .unreadable
                    .push(format!("line {}: {}", n + 1, trimmed)),
            }
            continue;
        }
        // A mark inside a comment (the convention's own description) is no step.
        let comment = ["/*", "*", "//"].iter().any(|c| trimmed.starts_with(c));
        if comment || kept.iter().any(|k| !k) {
            continue;
        }
        if let Some(at) = line.find(MARK) {
            let rest = &line[at + MARK.len()..];
            match rest.find("\\n\")") {
                Some(end) => {
                    steps.names.insert(rest[..end].to_string());
                }
                None => steps.unreadable.push(format!(
                    "line {}: a step mark without its end: {line}",
                    n + 1
                )),
            }
        }
    }
    if !kept.is_empty() {
        steps
            .unreadable
            .push(format!("{} conditional(s) never closed", kept.len()));
    }
    steps
}

#[test]
fn the_model_names_exactly_the_steps_of_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("model/cutover.pml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let model = model_steps(&text);
    assert!(
        model.unreadable.is_empty(),
        "{}: lines this test cannot read: {:?}",
        path.display(),
        model.unreadable
    );
    let code: BTreeSet<String> = Step::ALL.iter().map(|s| s.name().to_string()).collect();
    let not_modelled: Vec<&String> = code.difference(&model.names).collect();
    let not_in_code: Vec<&String> = model.names.difference(&code).collect();
    assert!(
        not_modelled.is_empty() && not_in_code.is_empty(),
        "the model and the code name different steps.\n  in Step::ALL (src/migrate/phase.rs) but \
         not in {}: {not_modelled:?}\n  in the model but not in Step::ALL: {not_in_code:?}",
        path.display()
    );
}

/// The reader itself: a name only in a variant or in a comment does not count
/// for the real model, a name in the variant's `#else` does, and a broken
/// conditional is reported.
#[test]
fn only_the_real_model_counts() {
    let text = "\
/* Marked by printf(\"step: <name>\\n\") */
 *   printf(\"step: in.a.comment\\n\")
#ifndef MAXCRASH
#define MAXCRASH 1
#endif
  d_step { printf(\"step: switch.pause\\n\"); x = 1 }
#ifdef OLD_ORDER
  d_step { printf(\"step: old.only\\n\") }
#else
     printf(\"step: switch.go_live\\n\");
#endif
";
    let steps = model_steps(text);
    assert!(steps.unreadable.is_empty(), "{:?}", steps.unreadable);
    assert_eq!(
        steps.names.into_iter().collect::<Vec<_>>(),
        ["switch.go_live", "switch.pause"]
    );

    let broken = model_steps("#if X\nprintf(\"step: a\\n\")\n#ifdef Y\n");
    assert_eq!(broken.unreadable.len(), 2, "{:?}", broken.unreadable);
}
