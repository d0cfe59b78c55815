//! The request as environment variables, for functions that get the body on stdin and answer
//! on stdout (exec functions in stdio mode, wasm command modules). The names are OpenFaaS's
//! classic watchdog's, so its functions run unchanged: `Http_Method`, `Http_Path`,
//! `Http_Query`, and `Http_<Header_Name>` per header.

/// The variables for one request. Repeated headers are joined with ", ".
pub fn request_env(method: &str, path: &str, query: &str, headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![
        ("Http_Method".into(), method.into()),
        ("Http_Path".into(), path.into()),
        ("Http_Query".into(), query.into()),
    ];
    for (name, value) in headers {
        let var = format!("Http_{}", canonical_header(name));
        match out.iter_mut().skip(3).find(|(n, _)| *n == var) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(value);
            }
            None => out.push((var, value.to_owned())),
        }
    }
    out
}

/// `x-request-id` -> `X_Request_Id`.
pub fn canonical_header(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, part) in name.split('-').enumerate() {
        if i > 0 {
            out.push('_');
        }
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.extend(chars.flat_map(char::to_lowercase));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_and_headers() {
        let env = request_env(
            "POST",
            "/a",
            "x=1",
            &[
                ("x-a".into(), "1".into()),
                ("content-type".into(), "text/plain".into()),
                ("x-a".into(), "2".into()),
            ],
        );
        assert_eq!(
            env,
            [
                ("Http_Method", "POST"),
                ("Http_Path", "/a"),
                ("Http_Query", "x=1"),
                ("Http_X_A", "1, 2"),
                ("Http_Content_Type", "text/plain"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert_eq!(canonical_header("x-REQUEST-id"), "X_Request_Id");
    }
}
