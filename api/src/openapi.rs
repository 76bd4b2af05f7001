//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::{
    openapi::{
        path::Operation,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        ContentBuilder, Ref, ResponseBuilder,
    },
    Modify, OpenApi,
};

use crate::routes::{events, rsvps, stats};

#[derive(OpenApi)]
#[openapi(
    info(title = "rsvp-api", description = "Events and rsvps; every write is published through a transactional outbox."),
    paths(
        events::create_event, events::get_event, events::list_rsvps, events::create_rsvp,
        rsvps::get_rsvp, rsvps::update_rsvp, rsvps::cancel_rsvp, rsvps::delete_rsvp, stats::get_stats,
    ),
    components(schemas(crate::routes::views::PublicRsvp)),
    modifiers(&BearerSchemes, &Unavailable),
)]
pub struct ApiDoc;

/// Every operation may answer 503: its deadline passed, or Postgres failed it.
struct Unavailable;

impl Modify for Unavailable {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.post, &mut item.patch, &mut item.put, &mut item.delete];
            for operation in operations.into_iter().flatten() {
                add_unavailable(operation);
            }
        }
    }
}

fn add_unavailable(operation: &mut Operation) {
    let description = "Not served in time, or Postgres failed it; `error.code` says what became of a write: \
        `request_timeout` (not applied), `outcome_unknown` (it may have committed: retry with the same \
        Idempotency-Key), `lock_timeout` or `statement_timeout` (not applied), `database_unavailable` (not applied).";
    let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    let response = ResponseBuilder::new().description(description).content("application/json", body).build();
    operation.responses.responses.insert("503".to_owned(), response.into());
}

struct BearerSchemes;

impl Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, description) in [
            ("admin_token", "The ADMIN_TOKEN the api was started with."),
            ("rsvp_token", "The token returned when the rsvp was created."),
        ] {
            let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build();
            components.add_security_scheme(name, SecurityScheme::Http(scheme));
        }
    }
}

pub async fn serve() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
