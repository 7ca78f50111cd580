//! OpenSSH host patterns, shared by `~/.ssh/config` `Host` lines and known_hosts host fields.

/// `*` matches any run of characters, `?` exactly one; host names compare case-insensitively.
pub(crate) fn wildcard(subject: &str, pattern: &str) -> bool {
    let s: Vec<char> = subject.to_lowercase().chars().collect();
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    // Greedy match with one backtrack point (the last `*`): linear in practice, never recursive.
    let (mut si, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == s.get(si) => {
                si += 1;
                pi += 1;
            }
            _ => match star {
                Some((star_pi, star_si)) => {
                    pi = star_pi + 1;
                    si = star_si + 1;
                    star = Some((star_pi, star_si + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// A pattern list as OpenSSH reads it: any matching `!pattern` vetoes the whole list,
/// otherwise one matching plain pattern is enough.
pub(crate) fn matches_list<'a>(subject: &str, patterns: impl IntoIterator<Item = &'a str>) -> bool {
    let mut hit = false;
    for pattern in patterns {
        match pattern.strip_prefix('!') {
            Some(negated) if wildcard(subject, negated) => return false,
            Some(_) => {}
            None => hit = hit || wildcard(subject, pattern),
        }
    }
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("pi1", "pi?"));
        assert!(wildcard("pi1.lan", "*.lan"));
        assert!(wildcard("PI1.LAN", "pi*.lan"));
        assert!(wildcard("anything", "*"));
        assert!(wildcard("", "*"));
        assert!(wildcard("a.b.c", "a*c"));
        assert!(wildcard("aXbXc", "a*b*c"));
        assert!(!wildcard("pi10", "pi?"));
        assert!(!wildcard("pi1.lan", "*.local"));
        assert!(!wildcard("", "?"));
        assert!(!wildcard("abc", "abcd"));
        assert!(wildcard("[10.0.0.1]:2222", "[10.0.0.?]:2222"));
    }

    #[test]
    fn negation_vetoes() {
        assert!(matches_list("pi1", ["pi*", "!pi2"]));
        assert!(!matches_list("pi2", ["pi*", "!pi2"]));
        assert!(!matches_list("pi2", ["!pi2", "pi*"]));
        // Only negations never match (as in OpenSSH).
        assert!(!matches_list("pi1", ["!pi2"]));
        assert!(!matches_list("pi1", std::iter::empty()));
    }
}
