//! The layering of `src/` as a test (see ARCHITECTURE.md).
//!
//! Reads every file of `src/` (non-test code: `#[cfg(test)]` items, comments and string
//! literals are skipped), collects its `use crate::…` / `crate::…` / `super::…` references
//! (`credbroker::…` in `main.rs`), maps files to the rooms of [`ROOMS`] and fails when
//!
//! - a file belongs to no room (a new module must be given its place first),
//! - a room refers to a room of the same or a higher rank (imports point down only, so no
//!   room imports one that imports it back),
//! - sibling files inside a room refer to each other in a circle (a room's `mod.rs` and its
//!   children may refer to each other: the children implement the parent's types),
//! - a file has more than [`MAX_FILE_LINES`] lines of code, or a function more than
//!   [`MAX_FN_LINES`] (lines of code: neither blank nor comment, tests aside).
//!
//! `cargo test --test architecture -- --nocapture` prints the room graph and the largest files
//! and functions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Longest source file, in lines of code (tests in the same file aside).
const MAX_FILE_LINES: usize = 1000;
/// Longest function, in lines of code.
const MAX_FN_LINES: usize = 80;

/// The rooms of `src/`, by module path, and their ranks: a room may refer only to rooms of a
/// lower rank. The tens are the layers of ARCHITECTURE.md; the units order rooms inside one.
const ROOMS: &[(&str, u32)] = &[
    // 0 ground: no crate imports at all.
    ("clock", 0),
    ("secret", 0),
    ("fsutil", 0),
    ("signals", 0),
    // 1 configuration.
    ("config", 10),
    // 2 ground+: what every room records or calls out with.
    ("metrics", 20),
    ("telemetry", 20),
    ("http", 20),
    // 3 upstream clients: know their protocol, never the broker.
    ("cognito", 30),
    ("probe", 30),
    ("appsync", 30),
    ("shared", 31),
    // 4 core rooms.
    ("oidc", 40),
    ("identity", 41),
    ("sessions", 42),
    ("sources", 42),
    ("readiness", 43),
    ("emulated", 44),
    // 5 the facade.
    ("broker", 50),
    // 6 surfaces.
    ("server", 60),
    ("grpc", 60),
    // 7 entry points.
    ("app", 70),
    ("credential_process", 70),
    ("subscribe", 70),
    ("cli", 71),
    ("doctor", 71),
    ("demo", 72),
    ("main", 79),
];

// ---------------------------------------------------------------------------------------------
// Reading Rust, just enough.

/// `src` with comments, string and character literals blanked out (line breaks kept, so line
/// numbers stay).
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if ch == 'r'
            && (i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2]))))
            && matches!(next, Some('"' | '#'))
            && {
                let mut j = i + 1;
                while c.get(j) == Some(&'#') {
                    j += 1;
                }
                c.get(j) == Some(&'"')
            }
        {
            // A raw string: r"…", r#"…"#.
            let mut hashes = 0;
            out.push('r');
            i += 1;
            while c[i] == '#' {
                hashes += 1;
                out.push('#');
                i += 1;
            }
            out.push('"');
            i += 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    out.push('"');
                    out.extend(std::iter::repeat_n('#', hashes));
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if ch == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if ch == '\'' && (next == Some('\\') || c.get(i + 2) == Some(&'\'')) {
            // A character literal ('x', '\n', '\u{1F600}'), not a lifetime.
            out.push('\'');
            i += 1;
            if c.get(i) == Some(&'\\') {
                out.push(' ');
                i += 1;
            }
            while i < c.len() && c[i] != '\'' {
                blank(&mut out, c[i]);
                i += 1;
            }
            out.push('\'');
            i += 1;
        } else {
            out.push(ch);
            i += 1;
        }
    }
    out
}

/// `code` (from [`code_only`]) without its `#[cfg(test)]` items.
fn without_tests(code: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let c: Vec<char> = code.chars().collect();
    let mut out: Vec<char> = c.clone();
    let text: String = c.iter().collect();
    let mut search = 0;
    while let Some(found) = text[search..].find(ATTR) {
        // Byte offset to char offset (the text is ASCII around attributes; count chars).
        let start = text[..search + found].chars().count();
        let mut i = start + ATTR.chars().count();
        // Further attributes of the same item.
        loop {
            while i < c.len() && c[i].is_whitespace() {
                i += 1;
            }
            if c.get(i) == Some(&'#') && c.get(i + 1) == Some(&'[') {
                let mut depth = 0;
                while i < c.len() {
                    match c[i] {
                        '[' => depth += 1,
                        ']' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            } else {
                break;
            }
        }
        // The item: up to a `;` outside brackets, or a balanced `{…}`.
        let mut depth = 0i32;
        while i < c.len() {
            match c[i] {
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                ';' if depth == 0 => {
                    i += 1;
                    break;
                }
                '{' if depth == 0 => {
                    let mut braces = 0;
                    while i < c.len() {
                        match c[i] {
                            '{' => braces += 1,
                            '}' => {
                                braces -= 1;
                                if braces == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        i += 1;
                    }
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        for ch in out.iter_mut().take(i.min(c.len())).skip(start) {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        search = text
            .char_indices()
            .nth(i.min(c.len()))
            .map_or(text.len(), |(b, _)| b);
    }
    out.into_iter().collect()
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Tokens with their line (1-based).
fn tokens(code: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(c[start..i].iter().collect()), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// The leaf paths of a use tree starting at `toks[*at]`, each prefixed by `prefix`.
fn use_tree(
    toks: &[(Tok, usize)],
    at: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    let mut path = prefix;
    loop {
        match toks.get(*at).map(|t| &t.0) {
            Some(Tok::Ident(name)) => {
                path.push(name.clone());
                *at += 1;
                match toks.get(*at).map(|t| &t.0) {
                    Some(Tok::PathSep) => *at += 1,
                    Some(Tok::Ident(kw)) if kw == "as" => {
                        *at += 2;
                        out.push(path);
                        return;
                    }
                    _ => {
                        out.push(path);
                        return;
                    }
                }
            }
            Some(Tok::Punct('{')) => {
                *at += 1;
                loop {
                    match toks.get(*at).map(|t| &t.0) {
                        Some(Tok::Punct('}')) => {
                            *at += 1;
                            return;
                        }
                        Some(Tok::Punct(',')) => *at += 1,
                        None => return,
                        _ => use_tree(toks, at, path.clone(), out),
                    }
                }
            }
            Some(Tok::Punct('*')) => {
                *at += 1;
                out.push(path);
                return;
            }
            _ => {
                if !path.is_empty() {
                    out.push(path);
                }
                return;
            }
        }
    }
}

/// One file of `src/`, read.
#[derive(Debug)]
struct File {
    /// `src/`-relative path.
    path: String,
    /// Module path (`["server", "appsync"]`; `["main"]` for the binary).
    module: Vec<String>,
    /// Lines of code (non-test, neither blank nor comment).
    lines: usize,
    /// Every function with its lines of code: (name, first line, lines).
    functions: Vec<(String, usize, usize)>,
    /// Absolute paths this file refers to, with the line.
    refs: Vec<(Vec<String>, usize)>,
}

fn module_of(path: &str) -> Vec<String> {
    let p = path.trim_end_matches(".rs");
    let mut parts: Vec<String> = p.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    if parts == ["lib"] {
        return Vec::new();
    }
    parts
}

fn read(path: &str, source: &str) -> File {
    let module = module_of(path);
    let code = without_tests(&code_only(source));
    let lines = code.lines().filter(|l| !l.trim().is_empty()).count();
    let line_has_code: Vec<bool> = code.lines().map(|l| !l.trim().is_empty()).collect();
    let code_lines = |from: usize, to: usize| {
        line_has_code
            .iter()
            .take(to)
            .skip(from.saturating_sub(1))
            .filter(|b| **b)
            .count()
    };
    let toks = tokens(&code);
    let is_main = path == "main.rs";
    let root = if is_main { "credbroker" } else { "crate" };

    // Inline modules (`mod name { … }`) change what `super` and `self` mean.
    let mut functions = Vec::new();
    let mut refs = Vec::new();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let here = |inline: &[(String, usize)]| {
        let mut m = if is_main { Vec::new() } else { module.clone() };
        m.extend(inline.iter().map(|(n, _)| n.clone()));
        m
    };
    let resolve = |raw: Vec<String>, inline: &[(String, usize)]| -> Option<Vec<String>> {
        let first = raw.first()?.as_str();
        if first == root {
            return Some(raw[1..].to_vec());
        }
        if first == "super" || first == "self" {
            let mut base = here(inline);
            let mut rest = &raw[..];
            while let Some(head) = rest.first() {
                match head.as_str() {
                    "super" => {
                        base.pop()?;
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            return Some(base);
        }
        None
    };
    while i < toks.len() {
        let (tok, line) = &toks[i];
        match tok {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Punct('{'), _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    inline.push((name.clone(), depth + 1));
                }
                i += 1;
            }
            Tok::Ident(kw) if kw == "use" => {
                let mut at = i + 1;
                let mut leaves = Vec::new();
                use_tree(&toks, &mut at, Vec::new(), &mut leaves);
                for leaf in leaves {
                    if let Some(abs) = resolve(leaf, &inline) {
                        refs.push((abs, *line));
                    }
                }
                i = at;
            }
            Tok::Ident(kw) if kw == "fn" => {
                if let Some((Tok::Ident(name), _)) = toks.get(i + 1) {
                    // The body: the first `{` outside brackets, unless a `;` ends it first.
                    let mut j = i + 2;
                    let mut brackets = 0i32;
                    let mut body = None;
                    while j < toks.len() {
                        match toks[j].0 {
                            Tok::Punct('(' | '[') => brackets += 1,
                            Tok::Punct(')' | ']') => brackets -= 1,
                            Tok::Punct(';') if brackets == 0 => break,
                            Tok::Punct('{') if brackets == 0 => {
                                body = Some(j);
                                break;
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    if let Some(open) = body {
                        let mut braces = 0;
                        let mut end = toks[open].1;
                        for (t, l) in &toks[open..] {
                            match t {
                                Tok::Punct('{') => braces += 1,
                                Tok::Punct('}') => {
                                    braces -= 1;
                                    if braces == 0 {
                                        end = *l;
                                        break;
                                    }
                                }
                                _ => {}
                            }
                        }
                        functions.push((name.clone(), *line, code_lines(*line, end)));
                    }
                }
                i += 1;
            }
            Tok::Ident(first)
                if (first == root || first == "super" || first == "self")
                    && toks.get(i + 1).is_some_and(|t| t.0 == Tok::PathSep)
                    && (i == 0 || toks[i - 1].0 != Tok::PathSep) =>
            {
                let mut raw = vec![first.clone()];
                let mut j = i + 1;
                while toks.get(j).is_some_and(|t| t.0 == Tok::PathSep) {
                    match toks.get(j + 1) {
                        Some((Tok::Ident(n), _)) => {
                            raw.push(n.clone());
                            j += 2;
                        }
                        _ => break,
                    }
                }
                if let Some(abs) = resolve(raw, &inline) {
                    refs.push((abs, *line));
                }
                i = j;
            }
            _ => i += 1,
        }
    }
    File {
        path: path.to_owned(),
        module: if is_main {
            vec!["main".to_owned()]
        } else {
            module
        },
        lines,
        functions,
        refs,
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// The room of a module path (longest matching prefix in `rooms`).
fn room_of<'a>(module: &[String], rooms: &'a [(&'a str, u32)]) -> Option<(&'a str, u32)> {
    rooms
        .iter()
        .filter(|(name, _)| {
            let parts: Vec<&str> = name.split("::").collect();
            parts.len() <= module.len() && parts.iter().zip(module).all(|(a, b)| a == b)
        })
        .max_by_key(|(name, _)| name.split("::").count())
        .copied()
}

/// The file module a reference lands in: its longest prefix that is a file's module.
fn target_module(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

/// What the checks found.
#[derive(Debug, Default)]
struct Findings {
    /// Room → rooms it refers to.
    graph: BTreeMap<String, BTreeSet<String>>,
    problems: Vec<String>,
}

fn check(files: &[File], rooms: &[(&str, u32)], max_file: usize, max_fn: usize) -> Findings {
    let mut found = Findings::default();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    // Sibling edges inside a room: (room, from child, to child).
    let mut siblings: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in files {
        if file.module.is_empty() {
            continue; // lib.rs: declarations only
        }
        let Some((room, rank)) = room_of(&file.module, rooms) else {
            found.problems.push(format!(
                "src/{}: module {} belongs to no room; give it a rank in tests/architecture.rs \
                 (and a place in ARCHITECTURE.md)",
                file.path,
                file.module.join("::")
            ));
            continue;
        };
        if file.lines > max_file {
            found.problems.push(format!(
                "src/{}: {} lines of code (at most {max_file}, tests aside); split it along its jobs",
                file.path, file.lines
            ));
        }
        for (name, line, n) in &file.functions {
            if *n > max_fn {
                found.problems.push(format!(
                    "src/{}:{line}: fn {name} has {n} lines of code (at most {max_fn})",
                    file.path
                ));
            }
        }
        found.graph.entry(room.to_owned()).or_default();
        let room_depth = room.split("::").count();
        for (path, line) in &file.refs {
            let Some(target) = target_module(path, &modules) else {
                continue; // the crate root's own items (none today) or an extern path
            };
            if target.is_empty() {
                continue;
            }
            let Some((to_room, to_rank)) = room_of(&target, rooms) else {
                continue; // reported for its own file
            };
            if to_room == room {
                // Inside a room: siblings (children of the room's top module) must not circle.
                let child = |m: &[String]| m.get(room_depth).cloned();
                if let (Some(a), Some(b)) = (child(&file.module), child(&target))
                    && a != b
                {
                    siblings
                        .entry(room.to_owned())
                        .or_default()
                        .entry(a)
                        .or_default()
                        .insert(b);
                }
                continue;
            }
            found
                .graph
                .entry(room.to_owned())
                .or_default()
                .insert(to_room.to_owned());
            if to_rank >= rank {
                found.problems.push(format!(
                    "src/{}:{line}: {room} (rank {rank}) refers to {} in {to_room} (rank \
                     {to_rank}); imports point to lower ranks only",
                    file.path,
                    path.join("::")
                ));
            }
        }
    }
    for cycle in cycles(&found.graph) {
        found.problems.push(format!(
            "rooms refer to each other in a circle: {}",
            cycle.join(" -> ")
        ));
    }
    for (room, graph) in &siblings {
        for cycle in cycles(graph) {
            found.problems.push(format!(
                "files of {room} refer to each other in a circle: {}",
                cycle.join(" -> ")
            ));
        }
    }
    found
}

/// Every circle of `graph` (one per strongly connected component of more than one node).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Reachability is enough at this size: a node is in a circle with each node it reaches and
    // that reaches it back.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(n) = stack.pop() {
            for m in graph.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    stack.push(m.clone());
                }
            }
        }
        seen
    };
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for node in graph.keys() {
        if done.contains(node) {
            continue;
        }
        let ahead = reach(node);
        if !ahead.contains(node) {
            continue;
        }
        let mut members: Vec<String> = ahead
            .iter()
            .filter(|m| reach(m).contains(node))
            .cloned()
            .collect();
        members.sort();
        done.extend(members.iter().cloned());
        members.push(members[0].clone());
        out.push(members);
    }
    out
}

fn src_files() -> Vec<File> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .expect("src/ is readable")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(&root)
                    .expect("under src/")
                    .to_string_lossy()
                    .replace('\\', "/");
                let text = std::fs::read_to_string(&path).expect("readable source");
                out.push(read(&rel, &text));
            }
        }
    }
    out
}

#[test]
fn imports_point_down_and_rooms_stay_small() {
    let files = src_files();
    assert!(files.len() > 20, "found the sources");
    let found = check(&files, ROOMS, MAX_FILE_LINES, MAX_FN_LINES);

    println!("rooms (rank) -> what they refer to:");
    let rank = |r: &str| ROOMS.iter().find(|(n, _)| *n == r).map_or(0, |(_, k)| *k);
    let mut rooms: Vec<&String> = found.graph.keys().collect();
    rooms.sort_by_key(|r| std::cmp::Reverse(rank(r)));
    for room in rooms {
        let to: Vec<&str> = found.graph[room].iter().map(String::as_str).collect();
        println!("  {room} ({}) -> {}", rank(room), to.join(" "));
    }
    let mut by_size: Vec<&File> = files.iter().collect();
    by_size.sort_by_key(|f| std::cmp::Reverse(f.lines));
    println!("largest files (lines of code, tests aside):");
    for f in by_size.iter().take(8) {
        println!("  {:5}  src/{}", f.lines, f.path);
    }
    let mut fns: Vec<(usize, String)> = files
        .iter()
        .flat_map(|f| {
            f.functions
                .iter()
                .map(move |(n, l, k)| (*k, format!("src/{}:{l} {n}", f.path)))
        })
        .collect();
    fns.sort_by(|a, b| b.cmp(a));
    println!("longest functions (lines of code):");
    for (n, name) in fns.iter().take(12) {
        println!("  {n:5}  {name}");
    }

    assert!(
        found.problems.is_empty(),
        "the architecture rules are broken (see ARCHITECTURE.md):\n  {}",
        found.problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// The checker itself, on made-up sources.

fn synthetic(files: &[(&str, &str)]) -> Findings {
    const RANKS: &[(&str, u32)] = &[("low", 0), ("mid", 10), ("high", 20)];
    let files: Vec<File> = files.iter().map(|(p, s)| read(p, s)).collect();
    check(&files, RANKS, 30, 5)
}

#[test]
fn an_import_of_a_higher_room_fails() {
    let ok = synthetic(&[
        ("low.rs", "pub struct L;"),
        ("mid.rs", "use crate::low::L;\npub struct M(L);"),
        ("high/mod.rs", "mod part;\nuse crate::{low::L, mid::M};"),
        (
            "high/part.rs",
            "use super::super::mid::M;\nfn f() { let _ = crate::low::L; }",
        ),
    ]);
    assert!(ok.problems.is_empty(), "{:?}", ok.problems);
    assert_eq!(
        ok.graph["high"],
        BTreeSet::from(["low".to_owned(), "mid".to_owned()])
    );

    let wrong = synthetic(&[
        ("low.rs", "pub fn f() { crate::high::go(); }"),
        ("mid.rs", "use crate::{low, high::{H, part::P}};"),
        (
            "high/mod.rs",
            "pub mod part;\npub fn go() {}\npub struct H;",
        ),
        ("high/part.rs", "pub struct P;"),
    ]);
    assert!(
        wrong
            .problems
            .iter()
            .any(|p| p.starts_with("src/low.rs:1: low (rank 0) refers to high::go")),
        "{:#?}",
        wrong.problems
    );
    assert!(
        wrong
            .problems
            .iter()
            .any(|p| p.contains("mid (rank 10) refers to high::part::P")),
        "{:#?}",
        wrong.problems
    );
}

#[test]
fn a_circle_between_rooms_or_sibling_files_fails() {
    let rooms: &[(&str, u32)] = &[("a", 10), ("b", 10)];
    let files = vec![
        read("a.rs", "use crate::b::B; pub struct A;"),
        read("b.rs", "use crate::a::A; pub struct B;"),
    ];
    let found = check(&files, rooms, 30, 5);
    assert!(
        found
            .problems
            .iter()
            .any(|p| p == "rooms refer to each other in a circle: a -> b -> a"),
        "{:#?}",
        found.problems
    );

    let circle = synthetic(&[
        ("low.rs", ""),
        ("high/mod.rs", "mod x; mod y; pub use x::X; pub use y::Y;"),
        ("high/x.rs", "use super::y::Y; pub struct X;"),
        ("high/y.rs", "pub struct Y(super::x::X);"),
    ]);
    assert_eq!(
        circle.problems,
        ["files of high refer to each other in a circle: x -> y -> x"],
    );
}

#[test]
fn tests_comments_and_strings_are_not_imports() {
    let found = synthetic(&[
        ("high.rs", "pub struct H;"),
        (
            "low.rs",
            r##"
//! Docs may link [`crate::high::H`].
/* and so may /* nested */ block comments: crate::high::H */
const S: &str = "crate::high::H";
const R: &str = r#"crate::high::H "quoted""#;
const C: char = '{';
fn lifetimes<'a>(x: &'a str) -> &'a str { x }

#[cfg(test)]
mod tests {
    use crate::high::H;
    fn t() { let _ = crate::high::H; }
}

#[cfg(test)]
fn helper() -> [u8; 4] { let _ = crate::high::H; [0; 4] }
"##,
        ),
    ]);
    assert!(found.problems.is_empty(), "{:#?}", found.problems);
    assert!(found.graph["low"].is_empty(), "{:?}", found.graph);
}

#[test]
fn long_files_and_functions_fail() {
    let long_fn = format!(
        "fn long() {{\n{}}}\nfn short() {{ 1 }}\n",
        "    x();\n".repeat(5)
    );
    let found = synthetic(&[("low.rs", &long_fn)]);
    assert_eq!(
        found.problems,
        ["src/low.rs:1: fn long has 7 lines of code (at most 5)"]
    );
    let long_file = "// a comment\n\nconst A: u8 = 1;\n".repeat(31);
    let found = synthetic(&[("low.rs", &long_file)]);
    assert_eq!(
        found.problems,
        ["src/low.rs: 31 lines of code (at most 30, tests aside); split it along its jobs"]
    );
    let unranked = synthetic(&[("elsewhere.rs", "")]);
    assert!(
        unranked.problems[0].contains("module elsewhere belongs to no room"),
        "{:?}",
        unranked.problems
    );
}
