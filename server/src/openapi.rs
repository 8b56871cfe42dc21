//! The OpenAPI 3.1 document of the REST API (`/api/openapi.json`, shown at `/docs`). Schemas
//! are generated from the shared Rust types (`schemars`), so the document cannot drift from
//! what the server sends; the paths are listed here, next to each other, by hand.

use app::analyse::FileOutcome;
use app::errors::ApiError;
use app::types::*;
use schemars::{generate::SchemaSettings, JsonSchema, SchemaGenerator};
use serde_json::{json, Value};

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    serde_json::to_value(g.subschema_for::<T>()).unwrap_or(Value::Null)
}

fn query(name: &str, description: &str, ty: Value, required: bool) -> Value {
    json!({ "name": name, "in": "query", "required": required, "description": description, "schema": ty })
}

/// The tuning parameters every ranking endpoint takes (the page URL's names).
fn tuning_params() -> Vec<Value> {
    vec![
        query(
            "t",
            "similarity threshold (absolute cosine, or a fraction of the best hit's)",
            json!({"type": "number", "minimum": -1, "maximum": 1}),
            false,
        ),
        query(
            "rel",
            "1: threshold relative to the best hit",
            json!({"type": "string", "enum": ["0", "1", "true", "false"]}),
            false,
        ),
        query(
            "conf",
            "minimum vote confidence",
            json!({"type": "number", "minimum": 0, "maximum": 1}),
            false,
        ),
        query(
            "k",
            "neighbours shown and voting",
            json!({"type": "integer", "minimum": 1, "maximum": MAX_K}),
            false,
        ),
        query(
            "mode",
            "vote mode",
            json!({"type": "string", "enum": ["majority", "weighted"]}),
            false,
        ),
        query(
            "rename",
            "category renames, from=to,from2=to",
            json!({"type": "string", "maxLength": MAX_RULES_LEN}),
            false,
        ),
        query(
            "ignore",
            "categories that do not vote, a,b",
            json!({"type": "string", "maxLength": MAX_RULES_LEN}),
            false,
        ),
    ]
}

/// Query expansion's and database augmentation's parameters (the page URL's names).
fn expansion_params() -> Vec<Value> {
    vec![
        query(
            "qe",
            "query expansion: neighbours averaged into the query before it is searched again (0: off)",
            json!({"type": "integer", "minimum": 0, "maximum": app::expand::MAX_N}),
            false,
        ),
        query(
            "qa",
            "query expansion: each neighbour weighs its similarity to this power",
            json!({"type": "number", "minimum": 0, "maximum": app::expand::MAX_ALPHA, "default": app::expand::DEFAULT_ALPHA}),
            false,
        ),
        query(
            "dba",
            "database-side augmentation: the indexed images are searched as each averaged with its N nearest others (0: off; default: the server's DBA setting)",
            json!({"type": "integer", "minimum": 0, "maximum": app::expand::MAX_N}),
            false,
        ),
        query(
            "da",
            "database-side augmentation: each neighbour weighs its similarity to this power",
            json!({"type": "number", "minimum": 0, "maximum": app::expand::MAX_ALPHA, "default": app::expand::DEFAULT_ALPHA}),
            false,
        ),
    ]
}

/// Every parameter of a page's tuning: the vote's, the re-ranking's, and the category source.
fn all_tuning_params() -> Vec<Value> {
    let mut p = tuning_params();
    p.extend(expansion_params());
    p.push(query(
        "by",
        "what gives the category: the trained head, the vote, or (best, the default) the more accurate of the two on the served folders' valid/ images",
        json!({"type": "string", "enum": ["best", "vote", "head"]}),
        false,
    ));
    p
}

fn ok(description: &str, content_type: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { content_type: { "schema": schema } } })
}

/// The whole document.
pub fn document() -> Value {
    let mut g = SchemaSettings::openapi3()
        .with(|s| s.definitions_path = "#/components/schemas/".into())
        .into_generator();
    let error = schema::<ApiError>(&mut g);
    let analysis = schema::<Analysis>(&mut g);
    let outcomes = schema::<Vec<FileOutcome>>(&mut g);
    let defaults = schema::<UiDefaults>(&mut g);
    let summary = schema::<IndexSummary>(&mut g);
    let stats = schema::<Stats>(&mut g);
    let choice = schema::<CategoryChoice>(&mut g);
    let dupes = schema::<app::dupes::DupesReport>(&mut g);
    let text_search = schema::<TextSearch>(&mut g);
    let job = schema::<JobStatus>(&mut g);
    let jobs = schema::<Vec<JobStatus>>(&mut g);
    let job_request = schema::<JobRequest>(&mut g);
    let status = schema::<ServerStatus>(&mut g);
    // Any request may meet the rate limit (429) and, with AUTH_READS=key, the key check (401).
    let errors = |codes: &[u16]| -> Value {
        let mut m = serde_json::Map::new();
        for c in codes.iter().chain(&[401, 429]) {
            m.insert(
                c.to_string(),
                ok("error", "application/json", error.clone()),
            );
        }
        Value::Object(m)
    };
    let with = |mut base: Value, extra: Value| {
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        base
    };
    let hash_param = query(
        "hash",
        "content hash (blake3, 64 hex characters)",
        json!({"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}),
        true,
    );
    let hashes_param = query(
        "hashes",
        "comma-separated content hashes of analyses",
        json!({"type": "string"}),
        true,
    );
    let mut export_params = vec![hashes_param];
    export_params.extend(all_tuning_params());
    let mut analysis_params = vec![
        hash_param,
        query(
            "split",
            "only hits from these splits, comma-separated (train,valid)",
            json!({"type": "string"}),
            false,
        ),
        query(
            "category",
            "only hits of these categories, comma-separated",
            json!({"type": "string"}),
            false,
        ),
    ];
    analysis_params.extend(expansion_params());
    let csv = json!({"type": "string"});

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "kadr",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Image classification and similar-image search. Analyse images, search the index, read statistics, export results and run index jobs. Errors are JSON {status, message, field}. With API_KEYS or ADMIN_PASSWORD set on the server, jobs need a key (Authorization: Bearer, or X-API-Key), and with AUTH_READS=key every call does. Each client is rate-limited (429 with Retry-After)."
        },
        "security": [{}, {"bearer": []}, {"apiKey": []}],
        "paths": {
            "/api/v1/analyse": { "post": {
                "summary": "Analyse images: similar indexed images, voted category, text",
                "description": "multipart/form-data with one or more image files (any field name), at most 100. The type is read from the bytes (JPEG, PNG, WebP, GIF, BMP). Refused files get an error each, with the status they would get alone (413 too large in bytes or pixels, 415 not a supported image, 422 corrupt, empty or a bad file name; 507 the server's disk is full), naming the file; the others are analysed. Form parts without a file name are not files; a form with none is 422. When no file could be analysed the answer is that status (422 when the reasons differ) with one error per file in `details`. 503 with Retry-After when the embedding queue is full. Results are cached by content hash.",
                "requestBody": { "required": true, "content": { "multipart/form-data": { "schema": {
                    "type": "object", "properties": { "files": { "type": "array", "items": { "type": "string", "format": "binary" } } }
                } } } },
                "responses": with(json!({ "200": ok("one outcome per file, in order", "application/json", outcomes) }), errors(&[400, 413, 415, 422, 500, 503, 507]))
            }},
            "/api/v1/analysis": { "get": {
                "summary": "One analysis by content hash (an upload or an indexed image), with the trained head's guess when there is a head",
                "parameters": analysis_params,
                "responses": with(json!({ "200": ok("the analysis, with the top hits", "application/json", analysis) }), errors(&[404, 422, 500]))
            }},
            "/api/v1/settings": { "get": {
                "summary": "Server defaults for tuning and uploads",
                "responses": with(json!({ "200": ok("defaults", "application/json", defaults) }), errors(&[500]))
            }},
            "/api/v1/summary": { "get": {
                "summary": "What the index holds per split and category",
                "responses": with(json!({ "200": ok("summary", "application/json", summary) }), errors(&[500]))
            }},
            "/api/v1/stats": { "get": {
                "summary": "Dashboard statistics, categories counted under the given tuning",
                "parameters": all_tuning_params(),
                "responses": with(json!({ "200": ok("statistics", "application/json", stats) }), errors(&[422, 500]))
            }},
            "/api/v1/choice": { "get": {
                "summary": "What by=best resolves to under the given vote: the trained head or the vote, by their accuracy on the served folders' valid/ images against train/",
                "parameters": tuning_params(),
                "responses": with(json!({ "200": ok("the choice", "application/json", choice) }), errors(&[422, 500]))
            }},
            "/api/v1/dupes": { "get": {
                "summary": "Exact and near duplicates among the served folders' images, and which leak across splits or categories",
                "description": "From the stored vectors (no embedding). Exact: the same content hash; near: cosine similarity at or above `threshold`. Pairs: exact first, then near, most similar first.",
                "parameters": [
                    query("threshold", "near-copy similarity, 0..1 (default: calibrated for the default backbone)", json!({"type": "number", "minimum": 0, "maximum": 1}), false),
                    query("limit", "pairs answered at most (the counts cover all)", json!({"type": "integer", "minimum": 1, "maximum": app::dupes::MAX_PAIRS}), false)
                ],
                "responses": with(json!({ "200": ok("the duplicates", "application/json", dupes) }), errors(&[422, 500]))
            }},
            "/api/v1/search": { "get": {
                "summary": "Search by text: the indexed images whose texts are most like a sentence, optionally fused with an example image",
                "description": "Each indexed image's text (its backbone labels) is embedded by the text model (all-MiniLM-L6-v2 by default) and compared with the sentence's embedding by cosine similarity. With `hash` (an upload or an indexed image), the score is the fused space's: (w²·cos_visual + (1−w)²·cos_text) / (w² + (1−w)²) at FUSION_WEIGHT w. From the stored vectors: only the sentence is embedded.",
                "parameters": [
                    query("q", "the sentence", json!({"type": "string", "minLength": 1, "maxLength": app::types::MAX_SEARCH_TEXT}), true),
                    query("hash", "content hash of an example image to fuse with the sentence", json!({"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}), false),
                    query("k", "results (default 20)", json!({"type": "integer", "minimum": 1, "maximum": app::types::MAX_K}), false),
                    query("split", "only these splits (comma-separated)", json!({"type": "string"}), false),
                    query("category", "only these categories (comma-separated)", json!({"type": "string"}), false)
                ],
                "responses": with(json!({ "200": ok("the images found", "application/json", text_search) }), errors(&[404, 422, 500]))
            }},
            "/api/v1/jobs": { "post": {
                "summary": "Start a job: add a dataset folder, re-index, evaluate",
                "description": "Needs a key when the server has API_KEYS or ADMIN_PASSWORD. Folders must be absolute and inside DATA_ROOTS (after resolving `..` and symlinks).",
                "security": [{"bearer": []}, {"apiKey": []}],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["request"], "properties": { "request": job_request }
                } } } },
                "responses": with(json!({ "200": ok("the started job", "application/json", job.clone()) }), errors(&[403, 409, 422, 500]))
            }},
            "/api/v1/job": { "get": {
                "summary": "A job's progress",
                "parameters": [query("id", "job id", json!({"type": "integer", "minimum": 0}), true)],
                "responses": with(json!({ "200": ok("the job", "application/json", job) }), errors(&[404, 422, 500]))
            }},
            "/api/v1/job-list": { "get": {
                "summary": "Every job since the server started, newest first",
                "responses": with(json!({ "200": ok("jobs", "application/json", jobs) }), errors(&[500]))
            }},
            "/api/v1/export.csv": { "get": {
                "summary": "CSV of analyses under a tuning: every field of the results view",
                "parameters": export_params.clone(),
                "responses": with(json!({ "200": ok("CSV", "text/csv", csv.clone()) }), errors(&[404, 422, 500]))
            }},
            "/api/v1/submission.csv": { "get": {
                "summary": "Competition-style submission CSV for analyses: image, category, confidence, neighbour_1..10, score_1..10",
                "description": "Neighbours from train/ and valid/ only. The categories come from `by`; the X-Kadr-Category-By header says which (vote or head) and, for best, X-Kadr-Category-Reason why.",
                "parameters": export_params,
                "responses": with(json!({ "200": ok("CSV", "text/csv", csv) }), errors(&[404, 422, 500]))
            }},
            "/img/{hash}": { "get": {
                "summary": "An analysed or indexed image by content hash, or its JPEG thumbnail",
                "parameters": [
                    { "name": "hash", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"} },
                    query("size", "thumb for a 256 px JPEG", json!({"type": "string", "enum": ["thumb", "full"]}), false)
                ],
                "responses": with(json!({ "200": { "description": "image bytes", "content": { "image/*": { "schema": {"type": "string", "format": "binary"} } } } }), errors(&[404, 422, 500]))
            }},
            "/status": { "get": {
                "summary": "Version, model, device, index size, uptime (open even with AUTH_READS=key)",
                "security": [{}],
                "responses": with(json!({ "200": ok("status", "application/json", status) }), errors(&[500]))
            }},
            "/metrics": { "get": {
                "summary": "Prometheus metrics: requests, latency, errors by kind, embedding queue, images embedded, model load time, memory",
                "responses": with(json!({ "200": ok("Prometheus text format", "text/plain", json!({"type": "string"})) }), errors(&[500]))
            }}
        },
        "components": {
            "schemas": g.take_definitions(true),
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "a key from API_KEYS, or ADMIN_PASSWORD" },
                "apiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key" }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_resolves_every_reference() {
        let doc = super::document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "Analysis",
            "ApiError",
            "Stats",
            "JobStatus",
            "FileOutcome",
            "DupesReport",
        ] {
            assert!(schemas.contains_key(name), "{name} missing");
        }
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
    }
}
