//! Credentials inside URLs (`http://user:password@proxy:3128`): found, stripped, or hidden in
//! text pikube shows.

/// The URL without its `user:password@`; None when it has none.
pub fn without_userinfo(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (_, host) = rest[..end].rsplit_once('@')?;
    Some(format!("{scheme}://{host}{}", &rest[end..]))
}

/// `text` with the `user:password` of every URL in it shown as `***`.
pub fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>'))
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(user_end) => {
                out.push_str("***");
                out.push_str(&tail[user_end..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_stripped_or_hidden() {
        assert_eq!(without_userinfo("http://svc:S3cret@proxy.lan:3128").as_deref(), Some("http://proxy.lan:3128"));
        assert_eq!(without_userinfo("https://tok@mirror.lan/v2?x=a@b").as_deref(), Some("https://mirror.lan/v2?x=a@b"));
        assert_eq!(without_userinfo("http://u:p@ss@proxy.lan/").as_deref(), Some("http://proxy.lan/"));
        assert_eq!(without_userinfo("http://proxy.lan:3128/path@x"), None);
        assert_eq!(without_userinfo("proxy.lan:3128"), None);
        let sources = "deb [trusted=yes] http://apt:S3cret@mirror.lan/debian bookworm main\n\
                       URIs: https://deb.debian.org/debian\nURIs: https://t@x.lan\n# http://a@b.lan/c@d\n";
        assert_eq!(
            redact_userinfo(sources),
            "deb [trusted=yes] http://***@mirror.lan/debian bookworm main\n\
             URIs: https://deb.debian.org/debian\nURIs: https://***@x.lan\n# http://***@b.lan/c@d\n"
        );
    }
}
