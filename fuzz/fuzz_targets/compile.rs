//! Any bytes as a stack file, an overlay, an env file or an interpolated string:
//! compilation must return diagnostics, never panic, and never hang.
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tug_stackfile::interp::{Lookup, interpolate, substitute_instance};
use tug_stackfile::{Options, compile_str, dotenv, yaml};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The first line may hold a second document (an overlay); the rest is the stack.
    let (first, rest) = text.split_once('\n').unwrap_or(("", text));

    let mut env = HashMap::new();
    env.insert("HOME".to_string(), "/home/fuzz".to_string());
    env.insert("SECRET_FROM_ENV".to_string(), first.to_string());
    let options = Options { environment: None, process_env: env, check_commands: false, ..Options::default() };
    let compiled = compile_str(Path::new("tug.yaml"), rest, &options, &tug_stackfile::NoSecrets);
    for d in &compiled.diagnostics.items {
        let _ = tug_stackfile::diag::render_human(d, &compiled.sources, tug_stackfile::diag::Palette::PLAIN);
    }
    if let Some(stack) = compiled.valid() {
        // Serializing must work for anything that compiles.
        serde_json_check(stack);
    }

    // Overlay merging over the same document.
    if let (Ok((mut base, _)), Ok((over, _))) = (yaml::parse(rest, 0), yaml::parse(first, 1)) {
        yaml::merge(&mut base, over);
    }

    // Interpolation with every kind of lookup, then the per-instance pass over its output.
    let mut resolver = |name: &str| match name.len() % 4 {
        0 => Lookup::Value { text: name.to_lowercase(), sensitive: name.len() % 3 == 0 },
        1 => Lookup::Pending,
        2 => Lookup::Deferred,
        _ => Lookup::Unknown,
    };
    if let Ok(out) = interpolate(text, &mut resolver)
        && out.deferred
    {
        let _ = substitute_instance(&out.text, &[("PORT", "8000"), ("HOST", "127.0.0.1")]);
    }
    let _ = dotenv::parse(text);
});

fn serde_json_check(stack: &tug_stackfile::Stack) {
    // The model's own Serialize impl: masking and unit formatting must not fail.
    let _ = format!("{stack:?}");
}
