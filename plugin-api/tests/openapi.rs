//! The committed OpenAPI document (`plugin-api/openapi.json`) is the generated one.
//! Regenerate with `UPDATE_OPENAPI=1 cargo test -p plugin-api --test openapi`.

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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

    #[test]
    fn document_is_valid_openapi_3_with_every_route() {
        let text = std::fs::read_to_string(committed_path()).unwrap();
        let doc: utoipa::openapi::OpenApi = serde_json::from_str(&text).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(value["openapi"].as_str().unwrap().starts_with("3."));
        for r in plugin_api::openapi::ROUTES {
            let item = doc
                .paths
                .paths
                .get(r.path)
                .unwrap_or_else(|| panic!("{}", r.path));
            let op = match r.method {
                plugin_api::openapi::Method::Get => item.get.as_ref(),
                plugin_api::openapi::Method::Post => item.post.as_ref(),
                plugin_api::openapi::Method::Delete => item.delete.as_ref(),
            };
            let op = op.unwrap_or_else(|| panic!("{:?} {}", r.method, r.path));
            assert_eq!(op.security.is_some(), r.authenticated, "{}", r.path);
        }
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
        assert_eq!(doc.paths.paths.len(), 17);
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
}
