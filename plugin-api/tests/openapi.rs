//! The committed OpenAPI document (`plugin-api/openapi.json`) is the generated one, and the
//! route table it is generated from ([`plugin_api::openapi::ROUTES`]) is the server's
//! (`agent/src/api/routes.rs`, read as text). Regenerate with
//! `UPDATE_OPENAPI=1 cargo test -p plugin-api --test openapi`.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;

    use plugin_api::openapi::{ERROR_CODES, Method, ROUTES, Route};

    fn committed_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json")
    }

    #[test]
    fn committed_document_is_the_generated_one() {
        let generated = plugin_api::openapi::document_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(committed_path(), &generated).unwrap();
        }
        let committed = std::fs::read_to_string(committed_path()).unwrap();
        assert!(
            committed == generated,
            "plugin-api/openapi.json is stale: run UPDATE_OPENAPI=1 cargo test -p plugin-api --test openapi"
        );
    }

    /// Every status a route documents: its success, its answers, 401 when authenticated.
    fn documented(r: &Route) -> BTreeSet<u16> {
        let mut set: BTreeSet<u16> = r.answers.iter().map(|a| a.status).collect();
        set.insert(r.status);
        if r.authenticated {
            set.insert(401);
        }
        set
    }

    #[test]
    fn document_is_valid_openapi_3_with_every_route() {
        let text = std::fs::read_to_string(committed_path()).unwrap();
        let doc: utoipa::openapi::OpenApi = serde_json::from_str(&text).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(value["openapi"].as_str().unwrap().starts_with("3."));
        for r in ROUTES {
            let item = doc
                .paths
                .paths
                .get(r.path)
                .unwrap_or_else(|| panic!("{}", r.path));
            let op = match r.method {
                Method::Get => item.get.as_ref(),
                Method::Post => item.post.as_ref(),
                Method::Delete => item.delete.as_ref(),
            };
            let op = op.unwrap_or_else(|| panic!("{:?} {}", r.method, r.path));
            assert_eq!(op.security.is_some(), r.authenticated, "{}", r.path);
            // One answer per status, and the operation lists exactly them.
            assert_eq!(
                documented(r).len(),
                r.answers.len() + 1 + usize::from(r.authenticated),
                "{:?} {}: a status twice",
                r.method,
                r.path
            );
            let statuses: BTreeSet<u16> = op
                .responses
                .responses
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            assert_eq!(statuses, documented(r), "{:?} {}", r.method, r.path);
            let body = op.request_body.as_ref();
            assert_eq!(body.is_some(), r.request.is_some(), "{}", r.path);
            if let Some(body) = body {
                assert_eq!(
                    body.required == Some(utoipa::openapi::Required::True),
                    r.request_required,
                    "{}",
                    r.path
                );
            }
            // An error answer names the codes it carries, each one the server's for it.
            for a in r.answers {
                assert_eq!(a.codes.is_empty(), a.schema != "ErrorBody", "{}", r.path);
                for code in a.codes {
                    let (_, status, _) = ERROR_CODES
                        .iter()
                        .find(|(c, _, _)| c == code)
                        .unwrap_or_else(|| panic!("{}: unknown code {code}", r.path));
                    assert!(
                        status.is_none_or(|s| s == a.status),
                        "{} {}: {code}",
                        r.path,
                        a.status
                    );
                    assert!(a.description.contains(code), "{}: {code}", r.path);
                }
            }
        }
        // The ErrorBody schema names every code and no other.
        let described =
            value["components"]["schemas"]["ErrorBody"]["properties"]["code"]["description"]
                .as_str()
                .unwrap();
        let named: BTreeSet<&str> = described
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .collect();
        let codes: BTreeSet<&str> = ERROR_CODES.iter().map(|(c, _, _)| *c).collect();
        assert_eq!(named, codes, "ErrorBody.code's description");
        // Every schema reference resolves to a component.
        let schemas = &value["components"]["schemas"];
        let mut refs = Vec::new();
        collect_refs(&value, &mut refs);
        assert!(refs.len() > 20);
        for r in refs {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas.get(name).is_some(), "dangling $ref {r}");
        }
        // (openapiv3 reads OpenAPI 3.0 only; utoipa writes 3.1, whose nullable types are
        // `type: [T, "null"]`, so utoipa's own types are the parser here.)
        let components = doc.components.unwrap();
        assert!(components.security_schemes.contains_key("bearer"));
        assert_eq!(doc.paths.paths.len(), 18);
    }

    fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "$ref" {
                        out.push(v.as_str().unwrap().to_owned());
                    } else {
                        collect_refs(v, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    // ---- The server's source, read as text ----------------------------------------------
    //
    // plugin-api cannot depend on the agent, so the check below reads the server's route
    // table and handlers as text (rustfmt's layout): the routes, their authentication,
    // every status a handler can answer (following the helpers of routes.rs it names),
    // the error codes, the request and response types. It would have caught a 200 or 409
    // missing from the document, a stale 501, an error code the server does not use.

    /// The server's API sources: in this workspace, always (a moved file fails the check
    /// rather than skipping it).
    fn server_dir() -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../agent/src/api");
        assert!(
            dir.join("routes.rs").is_file(),
            "{}: the server's routes are needed to check the document against them",
            dir.display()
        );
        dir
    }

    /// `src` with comments blanked (`strings: false`) or comments and the contents of string
    /// literals blanked (`strings: true`), byte offsets unchanged.
    fn blank(src: &str, strings: bool) -> String {
        let b = src.as_bytes();
        let mut out = b.to_vec();
        let mut i = 0;
        let clear = |out: &mut Vec<u8>, from: usize, to: usize| {
            for c in &mut out[from..to] {
                if *c != b'\n' {
                    *c = b' ';
                }
            }
        };
        while i < b.len() {
            if b[i..].starts_with(b"//") {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                clear(&mut out, i, end);
                i = end;
            } else if b[i..].starts_with(b"/*") {
                let end = src[i..].find("*/").map_or(b.len(), |p| i + p + 2);
                clear(&mut out, i, end);
                i = end;
            } else if b[i] == b'"' {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                if strings {
                    clear(&mut out, i + 1, j);
                }
                i = j + 1;
            } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
                i += 3; // a char literal, e.g. '"'
            } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
                let end = b[i + 2..].iter().position(|&c| c == b'\'').unwrap();
                i += end + 3;
            } else {
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn is_ident(c: u8) -> bool {
        c.is_ascii_alphanumeric() || c == b'_'
    }

    /// The whole-word occurrences of `word` in `text`, not right after a `.` (a method).
    fn references(text: &str, word: &str) -> Vec<usize> {
        let b = text.as_bytes();
        text.match_indices(word)
            .map(|(i, _)| i)
            .filter(|&i| {
                let before = i.checked_sub(1).map(|p| b[p]);
                let after = b.get(i + word.len()).copied();
                !before.is_some_and(|c| is_ident(c) || c == b'.') && !after.is_some_and(is_ident)
            })
            .collect()
    }

    /// Whether `text` names the function `name` of routes.rs: a call or a function value
    /// (`name(..)`, `Self::name`, `ApiFailure::name`), not a field (`name: ..`) nor another
    /// module's function (`engine::name`).
    fn names(text: &str, name: &str) -> bool {
        references(text, name).into_iter().any(|i| {
            let before = &text[..i];
            let after = text[i + name.len()..].trim_start();
            let field = after.starts_with(':') && !after.starts_with("::");
            let foreign = before.ends_with("::")
                && !(before.ends_with("Self::") || before.ends_with("ApiFailure::"));
            !field && !foreign
        })
    }

    struct Func {
        signature: String,
        /// Comments blanked.
        body: String,
        /// Comments and string contents blanked.
        bare: String,
    }

    /// Every `fn` of a file (free or in an `impl`), by name.
    fn functions(src: &str) -> BTreeMap<String, Func> {
        let code = blank(src, false);
        let bare = blank(src, true);
        let mut out = BTreeMap::new();
        for start in references(&bare, "fn") {
            let name: String = bare[start + 2..]
                .trim_start()
                .bytes()
                .take_while(|&c| is_ident(c))
                .map(char::from)
                .collect();
            let open = start + bare[start..].find('{').unwrap();
            let mut depth = 0;
            let mut close = open;
            for (i, c) in bare[open..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    close = open + i;
                    break;
                }
            }
            out.insert(
                name,
                Func {
                    signature: code[start..open].to_owned(),
                    body: code[open..=close].to_owned(),
                    bare: bare[open..=close].to_owned(),
                },
            );
        }
        out
    }

    fn status_of(name: &str) -> u16 {
        match name {
            "OK" => 200,
            "CREATED" => 201,
            "ACCEPTED" => 202,
            "NO_CONTENT" => 204,
            "BAD_REQUEST" => 400,
            "UNAUTHORIZED" => 401,
            "FORBIDDEN" => 403,
            "NOT_FOUND" => 404,
            "METHOD_NOT_ALLOWED" => 405,
            "CONFLICT" => 409,
            "PAYLOAD_TOO_LARGE" => 413,
            "UNPROCESSABLE_ENTITY" => 422,
            "TOO_MANY_REQUESTS" => 429,
            "INTERNAL_SERVER_ERROR" => 500,
            "NOT_IMPLEMENTED" => 501,
            "SERVICE_UNAVAILABLE" => 503,
            other => panic!("StatusCode::{other}: add it to status_of"),
        }
    }

    /// The `StatusCode::X` constants of `text`, with where they end.
    fn status_constants(text: &str) -> Vec<(u16, usize)> {
        references(text, "StatusCode")
            .into_iter()
            .filter_map(|i| {
                let rest = text[i + "StatusCode".len()..].strip_prefix("::")?;
                let name: String = rest
                    .bytes()
                    .take_while(|&c| is_ident(c))
                    .map(char::from)
                    .collect();
                Some((status_of(&name), i + "StatusCode::".len() + name.len()))
            })
            .collect()
    }

    /// Helpers that answer only some of their statuses in every use: `long` maps every
    /// repository error, and which ones a call meets depends on the call; a lock error
    /// (409) and an internal one (500) any call can meet.
    const PARTIAL: &[(&str, &[u16])] = &[("long", &[409, 500])];

    /// The statuses `name` can answer (`all`) or answers in every use (`!all`: through a
    /// [`PARTIAL`] helper, only its listed ones), following the functions of the file it
    /// names.
    fn statuses(
        fns: &BTreeMap<String, Func>,
        name: &str,
        all: bool,
        seen: &mut BTreeSet<String>,
    ) -> BTreeSet<u16> {
        let mut out = BTreeSet::new();
        if !seen.insert(name.to_owned()) {
            return out;
        }
        let f = &fns[name];
        out.extend(status_constants(&f.bare).into_iter().map(|(s, _)| s));
        for callee in fns.keys() {
            if callee == name || !names(&f.bare, callee) {
                continue;
            }
            match PARTIAL.iter().find(|(p, _)| p == callee) {
                Some((_, some)) if !all => out.extend(some.iter()),
                _ => out.extend(statuses(fns, callee, all, seen)),
            }
        }
        out
    }

    /// The server's statuses of one handler: (answered in every case, can be answered).
    fn handler_statuses(
        fns: &BTreeMap<String, Func>,
        handler: &str,
        authenticated: bool,
    ) -> (BTreeSet<u16>, BTreeSet<u16>) {
        let required = statuses(fns, handler, false, &mut BTreeSet::new());
        let allowed = statuses(fns, handler, true, &mut BTreeSet::new());
        let mut extra = BTreeSet::new();
        if !allowed.iter().any(|s| (200..300).contains(s)) {
            extra.insert(200); // `axum::Json(..)`, `Sse`, text without a status
        }
        let signature = &fns[handler].signature;
        if authenticated {
            extra.insert(401); // auth::require_token
        }
        if signature.contains("Path(") {
            extra.insert(400); // axum's rejection of a parameter that is not UTF-8
        }
        if signature.contains("Bytes") {
            extra.insert(400); // a body that could not be read
            extra.insert(413); // over axum's default limit (2 MB)
        }
        (&required | &extra, &allowed | &extra)
    }

    /// `(method, path, handler, authenticated)` of every `.route(..)` of `app`.
    fn server_routes(fns: &BTreeMap<String, Func>) -> Vec<(String, String, String, bool)> {
        let app = &fns["app"].body;
        let auth_at = app
            .find("require_token")
            .expect("app: the authenticated routes' layer");
        let mut out = Vec::new();
        for (at, _) in app.match_indices(".route(\"") {
            let rest = &app[at + ".route(\"".len()..];
            let path = &rest[..rest.find('"').unwrap()];
            // The method router: up to the `)` closing `.route(`.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .unwrap()
                .0;
            let methods = &rest[path.len() + 1..end];
            for method in ["get", "post", "delete", "put", "patch"] {
                for i in references(methods, method).into_iter().chain(
                    methods
                        .match_indices(&format!(".{method}("))
                        .map(|(i, _)| i + 1),
                ) {
                    let Some(args) = methods[i + method.len()..].strip_prefix('(') else {
                        continue;
                    };
                    let handler = args[..args.find(')').unwrap()].trim().to_owned();
                    assert!(fns.contains_key(&handler), "{path}: handler {handler}");
                    out.push((method.to_owned(), path.to_owned(), handler, at < auth_at));
                }
            }
        }
        out
    }

    fn method_name(m: Method) -> &'static str {
        match m {
            Method::Get => "get",
            Method::Post => "post",
            Method::Delete => "delete",
        }
    }

    #[test]
    fn routes_are_the_servers() {
        let dir = server_dir();
        let src = std::fs::read_to_string(dir.join("routes.rs")).unwrap();
        let fns = functions(&src);
        let server = server_routes(&fns);
        let ours: BTreeSet<(&str, &str, bool)> = ROUTES
            .iter()
            .map(|r| (method_name(r.method), r.path, r.authenticated))
            .collect();
        let theirs: BTreeSet<(&str, &str, bool)> = server
            .iter()
            .map(|(m, p, _, a)| (m.as_str(), p.as_str(), *a))
            .collect();
        assert_eq!(
            ours, theirs,
            "ROUTES (method, path, authenticated) vs routes.rs"
        );

        let mut problems = Vec::new();
        for (method, path, handler, authenticated) in &server {
            let r = ROUTES
                .iter()
                .find(|r| method_name(r.method) == method && r.path == path)
                .unwrap();
            let (required, allowed) = handler_statuses(&fns, handler, *authenticated);
            assert!(required.is_subset(&allowed), "{handler}: {required:?}");
            let ours = documented(r);
            let missing: Vec<_> = required.difference(&ours).collect();
            let stale: Vec<_> = ours.difference(&allowed).collect();
            if !missing.is_empty() || !stale.is_empty() {
                problems.push(format!(
                    "{method} {path} ({handler}): not documented {missing:?}, never answered {stale:?}"
                ));
            }

            let f = &fns[handler];
            // The request body: its type, and whether it may be left out.
            let takes_body = f.signature.contains("Bytes");
            let parsed = f.body.match_indices("let ").find_map(|(i, _)| {
                let decl = &f.body[i + 4..];
                let (_, ty) = decl[..decl.find('=')?].split_once(':')?;
                let ty = ty.trim();
                ty.ends_with("Request").then(|| ty.to_owned())
            });
            assert_eq!(takes_body, parsed.is_some(), "{handler}: body {parsed:?}");
            assert_eq!(
                r.request,
                parsed.as_deref(),
                "{method} {path}: request type"
            );
            if let Some(ty) = &parsed {
                let unconditional = f.body.contains(&format!(": {ty} = parse("));
                if unconditional != r.request_required {
                    problems.push(format!(
                        "{method} {path}: request body required: server {unconditional}, document {}",
                        r.request_required
                    ));
                }
            }
            // The success body, where the signature names it.
            let returns = f.signature.split("->").nth(1).unwrap_or("").trim();
            if let Some(ty) = returns
                .split("axum::Json<")
                .nth(1)
                .map(|t| t.trim_end_matches('>').trim())
            {
                assert_eq!(r.response, Some(ty), "{method} {path}: response type");
                assert_eq!(r.media, "application/json", "{method} {path}");
            }
            if returns.contains("Sse<") {
                assert_eq!(r.media, "text/event-stream", "{method} {path}");
            }
            if f.bare.contains("submit(") {
                // 202 a new job, 200 the earlier one of the same idempotency key: both a Job.
                if r.response != Some("Job")
                    || !r
                        .answers
                        .iter()
                        .any(|a| a.status == 200 && a.schema == "Job")
                {
                    problems.push(format!(
                        "{method} {path}: not 202 and 200 (a resubmission) with a Job"
                    ));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// The codes of the server's `ErrorBody`s: a literal right after `StatusCode::X,`
    /// (`ApiFailure::new(status, code, ..)`) or after `=> (` (`json_errors`' table; the
    /// status before its `=>`, none for a catch-all arm).
    fn server_codes(src: &str) -> BTreeSet<(String, Option<u16>)> {
        let code = blank(src, false);
        let literal = |text: &str| -> Option<String> {
            let rest = text.trim_start().strip_prefix('"')?;
            let lit = &rest[..rest.find('"')?];
            (!lit.is_empty() && lit.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'))
                .then(|| lit.to_owned())
        };
        let mut out = BTreeSet::new();
        for (status, end) in status_constants(&code) {
            let rest = &code[end..];
            if let Some(c) = rest.trim_start().strip_prefix(',').and_then(literal) {
                out.insert((c, Some(status)));
            } else if let Some(c) = rest
                .trim_start()
                .strip_prefix("=>")
                .and_then(|r| r.trim_start().strip_prefix('('))
                .and_then(literal)
            {
                out.insert((c, Some(status)));
            }
        }
        for (i, _) in code.match_indices("=>") {
            let rest = code[i + 2..].trim_start();
            let arm = code[..i].trim_end();
            let catch_all = arm.ends_with("other") || arm.ends_with('_');
            if let Some(c) = rest.strip_prefix('(').and_then(literal)
                && catch_all
            {
                out.insert((c, None));
            }
        }
        out
    }

    #[test]
    fn error_codes_are_the_servers() {
        let dir = server_dir();
        let mut theirs = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                theirs.extend(server_codes(&std::fs::read_to_string(path).unwrap()));
            }
        }
        let ours: BTreeSet<(String, Option<u16>)> = ERROR_CODES
            .iter()
            .map(|(c, s, _)| ((*c).to_owned(), *s))
            .collect();
        assert_eq!(ours, theirs, "ERROR_CODES (code, status) vs agent/src/api");
    }
}
