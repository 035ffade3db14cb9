//! Checks JSON values against the schemas of the reference OpenAPI description, loaded from
//! `tests/fixtures/` (verbatim copies of the files in the shared reference directory).
//!
//! Understands what those files use: `$ref`, `type` (one or a list, `null` included),
//! `nullable`, `enum`, `anyOf`, `oneOf`, `allOf`, `required`, `properties`,
//! `additionalProperties`, `items`, `minimum` and `maximum`. As the reference README says,
//! properties outside `required` come back as `null` in real responses, so `null` is accepted
//! for those.

use std::collections::BTreeMap;

use serde_json::Value;

/// The schemas of both reference files.
pub struct Spec {
    /// The OpenAPI document, for its `paths`.
    openapi: Value,
    /// Every component schema by name, from both files.
    schemas: BTreeMap<String, Value>,
}

fn load_yaml(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

impl Spec {
    /// Loads both reference files.
    pub fn load() -> Spec {
        let openapi = load_yaml("openai-batch-files-openapi.yaml");
        let lines = load_yaml("openai-batch-line-formats.yaml");
        let mut schemas = BTreeMap::new();
        for doc in [&openapi, &lines] {
            let map = doc["components"]["schemas"]
                .as_object()
                .expect("components.schemas");
            for (name, schema) in map {
                let clash = schemas.insert(name.clone(), schema.clone());
                assert!(clash.is_none(), "schema {name} is defined twice");
            }
        }
        Spec { openapi, schemas }
    }

    /// The schema of the 200 response of an operation, e.g. `("/batches", "post")`.
    pub fn response_schema(&self, path: &str, method: &str) -> &Value {
        let schema = &self.openapi["paths"][path][method]["responses"]["200"]["content"]["application/json"]
            ["schema"];
        assert!(
            !schema.is_null(),
            "the reference has no 200 schema for {method} {path}"
        );
        schema
    }

    /// A component schema by name.
    pub fn schema(&self, name: &str) -> &Value {
        self.schemas
            .get(name)
            .unwrap_or_else(|| panic!("no schema named {name}"))
    }

    /// Checks `value` against the 200 response schema of an operation; panics with every
    /// violation found.
    pub fn assert_response(&self, path: &str, method: &str, value: &Value) {
        let errors = self.check(self.response_schema(path, method), value);
        assert!(
            errors.is_empty(),
            "{method} {path} response breaks the reference schema:\n  {}\nresponse: {value:#}",
            errors.join("\n  ")
        );
    }

    /// Checks `value` against a named component schema; panics with every violation found.
    pub fn assert_named(&self, name: &str, value: &Value) {
        let errors = self.check(self.schema(name), value);
        assert!(
            errors.is_empty(),
            "value breaks schema {name}:\n  {}\nvalue: {value:#}",
            errors.join("\n  ")
        );
    }

    /// Every violation of `schema` by `value`, each with its JSON path.
    pub fn check(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.walk(schema, value, "$", &mut errors);
        errors
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let name = reference
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or_else(|| panic!("unsupported $ref {reference}"));
                self.resolve(self.schema(name))
            }
            None => schema,
        }
    }

    fn walk(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if value.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
            return;
        }
        if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
            let passing = options
                .iter()
                .filter(|o| self.check(o, value).is_empty())
                .count();
            if passing == 0 {
                errors.push(format!("{at}: matches none of anyOf: {value}"));
            }
        }
        if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
            let passing = options
                .iter()
                .filter(|o| self.check(o, value).is_empty())
                .count();
            if passing != 1 {
                errors.push(format!("{at}: matches {passing} of oneOf, not exactly one"));
            }
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for part in all {
                self.walk(part, value, at, errors);
            }
        }
        if let Some(types) = schema.get("type") {
            let allowed: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                other => panic!("unsupported type {other}"),
            };
            if !allowed.iter().any(|t| has_type(value, t)) {
                errors.push(format!("{at}: expected type {allowed:?}, got {value}"));
                return;
            }
        }
        if let Some(choices) = schema.get("enum").and_then(Value::as_array)
            && !choices.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {choices:?}"));
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                errors.push(format!("{at}: {n} is below the minimum {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && n > max
            {
                errors.push(format!("{at}: {n} is above the maximum {max}"));
            }
        }
        if let Value::Object(object) = value {
            self.walk_object(schema, object, at, errors);
        }
        if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                self.walk(item_schema, item, &format!("{at}[{i}]"), errors);
            }
        }
    }

    fn walk_object(
        &self,
        schema: &Value,
        object: &serde_json::Map<String, Value>,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for name in &required {
            if !object.contains_key(*name) {
                errors.push(format!("{at}: required property {name:?} is missing"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, value) in object {
            let path = format!("{at}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(_) if value.is_null() && !required.contains(&name.as_str()) => {}
                Some(property) => self.walk(property, value, &path, errors),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("{path}: no such property in the schema"));
                    }
                    Some(extra @ Value::Object(_)) => self.walk(extra, value, &path, errors),
                    _ => {}
                },
            }
        }
    }

    /// The names of a named object schema's properties.
    pub fn property_names(&self, name: &str) -> Vec<String> {
        self.resolve(self.schema(name))["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("unsupported type name {other}"),
    }
}
