//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
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
    modifiers(&BearerSchemes),
)]
pub struct ApiDoc;

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
