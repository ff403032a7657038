//! Name patterns, as permissions, limits rules and approval rules write them: `*` matches
//! any run of characters, `?` one character, anything else itself.
//!
//! ```
//! use mcp_gateway_layers::glob::glob;
//! assert!(glob("delete_*", "delete_repo"));
//! assert!(!glob("delete_*", "undelete_repo"));
//! assert!(glob("get_?ssue", "get_issue"));
//! ```

/// Whether `text` matches `pattern` (`*` any run of characters, `?` one character). It
/// allocates nothing: limits rules run it on every call.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    // The length of the character starting at byte `i` of `text` (always a boundary).
    let width = |i: usize| text[i..].chars().next().map_or(1, char::len_utf8);
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'?' {
            pi += 1;
            ti += width(ti);
        } else if pi < p.len() && p[pi] != b'*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += width(mark);
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn patterns() {
        assert!(glob("search_*", "search_code"));
        assert!(glob("search_*", "search_"));
        assert!(!glob("search_*", "get_search"));
        assert!(glob("*", ""));
        assert!(glob("a?c*", "abcdef"));
        assert!(glob("*_admin_*", "x_admin_y"));
        assert!(!glob("*_admin_*", "x_admin"));
        assert!(glob("a*b*c", "a_b_c"));
        assert!(!glob("a*b*c", "a_c"));
        assert!(!glob("*ab", "b"));
        assert!(glob("get_issue", "get_issue"));
        assert!(!glob("get_issue", "get_issues"));
        assert!(!glob("analyze_*", "analyz"));
        assert!(glob("caf?_*", "café_menu"));
        assert!(glob("*é", "thé"));
        assert!(!glob("?", "éé"));
    }
}
