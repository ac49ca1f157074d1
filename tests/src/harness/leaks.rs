//! Searching raw bytes (what a client received, what was published) for secrets: as written,
//! in any letter case, without separators, and inside base64 or hex runs, so a test cannot pass
//! because a value was merely re-encoded.

use base64::Engine;

/// The needles found in `bytes`, each with where it was found.
pub fn leaked(bytes: &[u8], needles: &[&str]) -> Vec<String> {
    let mut views = vec![("raw".to_string(), String::from_utf8_lossy(bytes).to_lowercase())];
    for run in runs(bytes, |b| b.is_ascii_alphanumeric() || b"+/=\r\n".contains(&b), 12) {
        let compact: Vec<u8> = run.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        // The run may have picked up a neighbouring byte: try each alignment.
        for skip in 0..4.min(compact.len()) {
            for engine in
                [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::STANDARD_NO_PAD]
            {
                let body = &compact[skip..];
                let cut = &body[..body.len() - body.len() % 4];
                if let Ok(decoded) = engine.decode(cut).or_else(|_| engine.decode(body)) {
                    views.push(("base64".into(), String::from_utf8_lossy(&decoded).to_lowercase()));
                }
            }
        }
    }
    for run in runs(bytes, |b| b.is_ascii_hexdigit(), 16) {
        for skip in 0..2.min(run.len()) {
            let body = &run[skip..];
            if let Ok(decoded) = hex::decode(&body[..body.len() - body.len() % 2]) {
                views.push(("hex".into(), String::from_utf8_lossy(&decoded).to_lowercase()));
            }
        }
    }
    let mut found = Vec::new();
    for needle in needles {
        let lower = needle.to_lowercase();
        let bare = compact(&lower);
        for (view, text) in &views {
            let hit = text.contains(&lower) || (bare.len() >= 9 && compact(text).contains(&bare));
            if hit {
                found.push(format!("{needle:?} ({view})"));
                break;
            }
        }
    }
    found
}

fn compact(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '@' || *c == '.').collect()
}

fn runs(bytes: &[u8], keep: impl Fn(u8) -> bool, min: usize) -> Vec<&[u8]> {
    bytes.split(|b| !keep(*b)).filter(|run| run.len() >= min).collect()
}
