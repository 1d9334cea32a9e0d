//! Checks API requests against Firecracker's Swagger 2.0 specification
//! (`tests/data/firecracker-api.yaml`), covering the parts of Swagger that
//! specification uses: paths with `{param}` segments, body parameters,
//! `$ref` to definitions, objects with `required` and `properties`,
//! strings, integers with `minimum`/`maximum`, booleans, arrays and enums.
//!
//! Firecracker deserializes bodies with `deny_unknown_fields`, so a field
//! the schema does not list is a violation here too.
//!
//! Shared by the fake jailer (which answers 400 like Firecracker) and the
//! integration tests (`#[path]`-included), so both judge by the same rules.

use std::path::Path;

use serde_json::{Map, Value};

/// The path template matching a request path, its path item, and the
/// values of its `{param}` segments.
struct PathMatch<'a> {
    template: &'a str,
    item: &'a Value,
    params: Vec<(String, String)>,
}

/// A loaded API specification.
pub struct ApiSpec {
    doc: Value,
}

impl ApiSpec {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(yaml: &str) -> Result<Self, String> {
        let doc: Value = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
        if doc.get("swagger").and_then(Value::as_str) != Some("2.0") {
            return Err("not a Swagger 2.0 document".to_owned());
        }
        if !doc.get("paths").is_some_and(Value::is_object) {
            return Err("no `paths`".to_owned());
        }
        Ok(Self { doc })
    }

    /// Checks one request; the error lists every violation found.
    pub fn check(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let Some(PathMatch {
            template,
            item,
            params,
        }) = self.find_path(path)
        else {
            return Err(vec![format!("{path} is not a path of the API")]);
        };
        let Some(operation) = item.get(method.to_ascii_lowercase()) else {
            return Err(vec![format!("{method} is not allowed on {template}")]);
        };
        let parameters = operation
            .get("parameters")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut body_schema = None;
        for p in parameters {
            match p.get("in").and_then(Value::as_str) {
                Some("body") => {
                    let required = p.get("required").and_then(Value::as_bool).unwrap_or(false);
                    body_schema = Some((p.get("schema").unwrap_or(&Value::Null), required));
                }
                Some("path") => {
                    let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                    if params.iter().all(|(n, v)| n != name || v.is_empty()) {
                        problems.push(format!("path parameter {name} is missing"));
                    }
                }
                _ => {}
            }
        }
        match (body_schema, body) {
            (Some((schema, _)), Some(body)) => {
                self.check_value(schema, body, "body", &mut problems)
            }
            (Some((_, true)), None) => problems.push(format!("{method} {template} needs a body")),
            (None, Some(_)) => problems.push(format!("{method} {template} takes no body")),
            _ => {}
        }
        // Firecracker's own rule beyond the schema: an id in the path must
        // equal the same id in the body ("drive_id", "iface_id").
        if let Some(Value::Object(fields)) = body {
            for (name, value) in &params {
                if let Some(in_body) = fields.get(name).and_then(Value::as_str) {
                    if in_body != value {
                        problems.push(format!(
                            "{name} in the path ({value:?}) differs from the body's ({in_body:?})"
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn find_path(&self, path: &str) -> Option<PathMatch<'_>> {
        let paths = self.doc.get("paths")?.as_object()?;
        let wanted: Vec<&str> = path.split('/').collect();
        paths.iter().find_map(|(template, item)| {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != wanted.len() {
                return None;
            }
            let mut params = Vec::new();
            for (t, w) in parts.iter().zip(&wanted) {
                if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    params.push((name.to_owned(), (*w).to_owned()));
                } else if t != w {
                    return None;
                }
            }
            Some(PathMatch {
                template: template.as_str(),
                item,
                params,
            })
        })
    }

    fn resolve<'a>(
        &'a self,
        schema: &'a Value,
        at: &str,
        problems: &mut Vec<String>,
    ) -> Option<&'a Value> {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            return Some(schema);
        };
        let target = reference
            .strip_prefix("#/definitions/")
            .and_then(|name| self.doc.get("definitions")?.get(name));
        if target.is_none() {
            problems.push(format!(
                "{at}: the spec's reference {reference} does not resolve"
            ));
        }
        target
    }

    fn check_value(&self, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
        let Some(schema) = self.resolve(schema, at, problems) else {
            return;
        };
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            if !options.contains(value) {
                problems.push(format!(
                    "{at}: {value} is not one of {}",
                    Value::Array(options.clone())
                ));
            }
        }
        let ty = schema.get("type").and_then(Value::as_str);
        match ty {
            Some("object") => match value {
                Value::Object(fields) => self.check_object(schema, fields, at, problems),
                _ => problems.push(format!("{at}: expected an object, got {value}")),
            },
            Some("array") => match value {
                Value::Array(items) => {
                    let item_schema = schema.get("items").unwrap_or(&Value::Null);
                    for (i, item) in items.iter().enumerate() {
                        self.check_value(item_schema, item, &format!("{at}[{i}]"), problems);
                    }
                }
                _ => problems.push(format!("{at}: expected an array, got {value}")),
            },
            Some("string") if !value.is_string() => {
                problems.push(format!("{at}: expected a string, got {value}"));
            }
            Some("boolean") if !value.is_boolean() => {
                problems.push(format!("{at}: expected a boolean, got {value}"));
            }
            Some("integer") => {
                if !(value.is_i64() || value.is_u64()) {
                    problems.push(format!("{at}: expected an integer, got {value}"));
                } else {
                    check_bounds(schema, value, at, problems);
                }
            }
            Some("number") => {
                if !value.is_number() {
                    problems.push(format!("{at}: expected a number, got {value}"));
                } else {
                    check_bounds(schema, value, at, problems);
                }
            }
            // No type (or one already satisfied): nothing more to check.
            _ => {}
        }
    }

    fn check_object(
        &self,
        schema: &Value,
        fields: &Map<String, Value>,
        at: &str,
        problems: &mut Vec<String>,
    ) {
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = name.as_str() {
                if !fields.contains_key(name) {
                    problems.push(format!("{at}: required field {name} is missing"));
                }
            }
        }
        // An object schema without `properties` is free-form (e.g. MMDS data).
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (name, value) in fields {
            match properties.get(name) {
                Some(property) => {
                    self.check_value(property, value, &format!("{at}.{name}"), problems)
                }
                None => problems.push(format!(
                    "{at}: unknown field {name} (known: {})",
                    properties.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
            }
        }
    }
}

fn check_bounds(schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(v) = value.as_f64() else { return };
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        if v < min {
            problems.push(format!("{at}: {value} is below the minimum {min}"));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        if v > max {
            problems.push(format!("{at}: {value} is above the maximum {max}"));
        }
    }
}
