//! Ansible's INI inventory: `[group]` host lines with `key=value` vars, `[group:children]`,
//! `[group:vars]`, hosts before any section in `ungrouped`, and ranges like `node[01:03]`.

use super::{ImportError, Inventory, Var};

enum Section {
    Hosts(String),
    Children(String),
    Vars(String),
}

/// What is wrong with a line, and how to fix it.
type LineError = (String, &'static str);

pub fn parse(file: &str, text: &str) -> Result<Inventory, ImportError> {
    let mut inv = Inventory::default();
    let mut section = Section::Hosts("ungrouped".into());
    for (i, raw) in text.lines().enumerate() {
        let line = i as u64 + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        let done = match l.strip_prefix('[') {
            Some(header) => header_line(l, header).map(|s| {
                let (Section::Hosts(g) | Section::Children(g) | Section::Vars(g)) = &s;
                inv.group_mut(g, line);
                section = s;
            }),
            None => body_line(&mut inv, &section, l, line),
        };
        done.map_err(|(message, hint)| ImportError::Syntax { file: file.into(), line, message, hint: hint.into() })?;
    }
    Ok(inv)
}

fn header_line(l: &str, header: &str) -> Result<Section, LineError> {
    let kinds = "write it as [group], [group:children] or [group:vars]";
    let Some(header) = header.split(['#', ';']).next().map(str::trim).and_then(|h| h.strip_suffix(']')) else {
        return Err((format!("section header {l:?} has no closing ']'"), kinds));
    };
    let (name, section) = match header.split_once(':') {
        None => (header, Section::Hosts(header.to_string())),
        Some((g, "children")) => (g, Section::Children(g.to_string())),
        Some((g, "vars")) => (g, Section::Vars(g.to_string())),
        Some((_, kind)) => return Err((format!("unknown section kind {kind:?}"), kinds)),
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err((format!("{name:?} is not a group name"), "group names are one word, like [nodes]"));
    }
    Ok(section)
}

fn body_line(inv: &mut Inventory, section: &Section, l: &str, line: u64) -> Result<(), LineError> {
    match section {
        Section::Hosts(group) => {
            let tokens = tokens(l).map_err(|m| (m, "close the quote, or quote values that contain spaces"))?;
            let Some((pattern, rest)) = tokens.split_first() else { return Ok(()) };
            let mut vars = Vec::new();
            for t in rest {
                let Some((k, v)) = t.split_once('=') else {
                    return Err((
                        format!("{t:?} is not key=value"),
                        "host lines are `name key=value key=\"quoted value\"`",
                    ));
                };
                vars.push(Var { key: k.to_string(), value: v.to_string(), line });
            }
            let (pattern, port) = split_port(pattern);
            if let Some(p) = port {
                vars.push(Var { key: "ansible_port".into(), value: p.into(), line });
            }
            for name in expand(pattern).map_err(|m| (m, "write a range as [01:03] or [a:c]"))? {
                inv.add_host(group, &name, line, vars.clone());
            }
        }
        Section::Children(group) => {
            let child = l.split_whitespace().next().unwrap_or(l).to_string();
            inv.group_mut(&child, line);
            let g = inv.group_mut(group, line);
            if !g.children.contains(&child) {
                g.children.push(child);
            }
        }
        Section::Vars(group) => {
            let Some((k, v)) = l.split_once('=') else {
                return Err((format!("{l:?} is not key=value"), "lines under [group:vars] are `key=value`"));
            };
            inv.group_mut(group, line).vars.push(Var { key: k.trim().to_string(), value: unquote(v.trim()), line });
        }
    }
    Ok(())
}

/// Splits a host line on whitespace outside quotes; quotes are removed, `#` starts a comment.
fn tokens(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_token = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_token = true;
            }
            (None, '#') if !in_token => break,
            (None, c) if c.is_whitespace() => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_token = true;
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unclosed {q} quote"));
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

fn unquote(v: &str) -> String {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    v.to_string()
}

/// `host:2222` names the SSH port; an IPv6 address (several colons) does not.
fn split_port(pattern: &str) -> (&str, Option<&str>) {
    match pattern.split_once(':') {
        Some((h, p)) if !p.contains(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (pattern, None),
    }
}

const MAX_RANGE: u32 = 1000;

/// Expands Ansible host ranges: `node[01:03]` → node01, node02, node03; `[a:c]`; `[0:10:5]`.
fn expand(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('[') else { return Ok(vec![pattern.to_string()]) };
    let close =
        pattern[open..].find(']').map(|c| open + c).ok_or_else(|| format!("range in {pattern:?} has no ']'"))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let parts: Vec<&str> = body.split(':').collect();
    let bad = || format!("{pattern:?}: [{body}] is not a range");
    let (start, end, step) = match parts[..] {
        [s, e] => (s, e, 1),
        [s, e, st] => (s, e, st.parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    let items: Vec<String> = match (start.parse::<u32>(), end.parse::<u32>()) {
        // A typo like [1:100000] would otherwise make a host list nobody meant.
        (Ok(a), Ok(b)) if b.saturating_sub(a) >= MAX_RANGE => {
            return Err(format!("{pattern:?}: [{body}] names more than {MAX_RANGE} hosts"))
        }
        (Ok(a), Ok(b)) if a <= b => {
            (a..=b).step_by(step as usize).map(|n| format!("{n:0width$}", width = start.len())).collect()
        }
        _ => match (start.as_bytes(), end.as_bytes()) {
            ([a], [b]) if a.is_ascii_lowercase() && b.is_ascii_lowercase() && a <= b => {
                (*a..=*b).step_by(step as usize).map(|c| (c as char).to_string()).collect()
            }
            _ => return Err(bad()),
        },
    };
    let mut out = Vec::new();
    for item in items {
        out.extend(expand(&format!("{head}{item}{tail}"))?);
        if out.len() > MAX_RANGE as usize {
            return Err(format!("{pattern:?} names more than {MAX_RANGE} hosts"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_keep_leading_zeros_and_letters() {
        assert_eq!(expand("node[01:03]").unwrap(), ["node01", "node02", "node03"]);
        assert_eq!(expand("db-[a:c].lan").unwrap(), ["db-a.lan", "db-b.lan", "db-c.lan"]);
        assert_eq!(expand("n[0:10:5]").unwrap(), ["n0", "n5", "n10"]);
        assert!(expand("n[3:1]").is_err());
        assert!(expand("n[1:1001]").is_err() && expand("n[1:1000]").is_ok());
        assert!(expand("n[1:100]-[1:100]").is_err(), "nested ranges count together");
    }

    #[test]
    fn host_lines_keep_quoted_values_and_drop_comments() {
        let t = tokens(r#"pi1 ansible_host=10.0.0.1 note="two words" # comment"#).unwrap();
        assert_eq!(t, ["pi1", "ansible_host=10.0.0.1", "note=two words"]);
        assert!(tokens("pi1 a=\"open").is_err());
    }
}
