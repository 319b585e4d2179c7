//! What the router's layers add to every route, written into the document the
//! handlers' attributes make (see `routes`): the `x-request-id` header both
//! ways, the 408 of the timeout layer, the 503 of the concurrency limit (with
//! `Retry-After`), the 500 of a panic or a database failure, and the admin
//! bearer scheme.

use serde_json::Value;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::info::{InfoBuilder, LicenseBuilder};
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Required};

use super::MAX_BODY_BYTES;

/// The header the request-id layers read and set.
const REQUEST_ID: &str = "x-request-id";

/// The document served: `doc` completed with what every route shares.
pub(super) fn document(mut doc: OpenApi) -> Value {
    finish(&mut doc);
    // Plain structs, maps and strings: serialising cannot fail.
    let mut value = serde_json::to_value(&doc).unwrap_or_default();
    camel_case_links(&mut value);
    value
}

/// utoipa 5 writes a Link object's fields in snake case (`operation_id`), which
/// no client reads; its 6.x, which fixes that, needs a newer Rust than ours.
fn camel_case_links(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(links)) = map.get_mut("links") {
                for link in links.values_mut() {
                    let Value::Object(link) = link else { continue };
                    for (from, to) in [
                        ("operation_id", "operationId"),
                        ("operation_ref", "operationRef"),
                        ("request_body", "requestBody"),
                    ] {
                        if let Some(v) = link.remove(from) {
                            link.insert(to.into(), v);
                        }
                    }
                }
            }
            map.values_mut().for_each(camel_case_links);
        }
        Value::Array(items) => items.iter_mut().for_each(camel_case_links),
        _ => {}
    }
}

/// Completes `doc` with what every route shares.
fn finish(doc: &mut OpenApi) {
    // Ours, not the defaults `utoipa_axum` starts from (its own package's).
    doc.info = InfoBuilder::new()
        .title("interview-store")
        .version(env!("CARGO_PKG_VERSION"))
        .license(Some(
            LicenseBuilder::new()
                .name(env!("CARGO_PKG_LICENSE"))
                .identifier(Some(env!("CARGO_PKG_LICENSE")))
                .build(),
        ))
        .build();
    doc.info.description = Some(format!(
        "The interview chat API over SQLite or PostgreSQL. Every error answer is an `Error` \
         body; request bodies are at most {MAX_BODY_BYTES} bytes."
    ));
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <INTERVIEW_ADMIN_TOKEN>` (the scheme in any case).",
                    ))
                    .build(),
            ),
        );
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            finish_operation(op);
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn finish_operation(op: &mut Operation) {
    // An optional body (`Option<T>`) is one that may be left out, not a JSON `null`.
    if let Some(body) = op.request_body.as_mut() {
        if body.required != Some(Required::True) {
            for content in body.content.values_mut() {
                if let Some(RefOr::T(Schema::Object(object))) = &mut content.schema {
                    if let SchemaType::Array(types) = &object.schema_type {
                        let types: Vec<Type> = types
                            .iter()
                            .filter(|t| **t != Type::Null)
                            .cloned()
                            .collect();
                        if let [only] = types.as_slice() {
                            object.schema_type = SchemaType::Type(only.clone());
                        }
                    }
                }
            }
        }
    }
    op.parameters.get_or_insert_with(Vec::new).push(
        ParameterBuilder::new()
            .name(REQUEST_ID)
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "The request's id for logs and error bodies: kept when 1 to 128 letters, digits, \
                 `.`, `_`, `:` or `-`; otherwise (or when absent) replaced by a new UUID.",
            ))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build(),
    );
    let responses = &mut op.responses.responses;
    for (status, description) in [
        (
            "408",
            "The request took longer than `INTERVIEW_HTTP_TIMEOUT_MS`.",
        ),
        (
            "500",
            "The database failed (`db`) or the server did (`internal`); the log has the detail \
             under the request id.",
        ),
        (
            "503",
            "The server is at its limit of concurrent requests (`unavailable`); retry later.",
        ),
    ] {
        responses
            .entry(status.to_string())
            .or_insert_with(|| error_response(description).into());
    }
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        response.headers.insert(
            REQUEST_ID.into(),
            header("The request's id (the client's, if fit, or a new UUID)."),
        );
        if status == "503" {
            response.headers.insert(
                "retry-after".into(),
                header("Seconds to wait before retrying."),
            );
        }
    }
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("Error"))),
        )
        .build()
}

fn header(description: &str) -> Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String))
        .description(Some(description))
        .build()
}
