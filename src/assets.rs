//! The browser's side of the wire, served by the node itself: the JavaScript client
//! (`client/switchboard.js`, at `/switchboard.js`), its TypeScript declarations
//! (`/switchboard.d.ts`) and the demo page (`client/index.html`, at `/`), all compiled into
//! the binary so a node needs no files beside it. `startup` registers them when
//! `server.serve_client` is true (the default); with it false they are not routes at all and
//! answer 404 like any unknown path.
//!
//! Each answer carries an `ETag` (a hash of the file, fixed per build) and
//! `Cache-Control: no-cache`: a browser keeps its copy but asks again each time, so a node
//! upgraded to a new client is picked up at the next load without a stale module mixing
//! with a new server, and an unchanged file costs a 304.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

/// One compiled-in file and its validator.
struct Asset {
    /// The file's bytes, as in the repository at build time.
    body: &'static str,
    /// `Content-Type` header value.
    content_type: &'static str,
}

const CLIENT: Asset = Asset {
    body: include_str!("../client/switchboard.js"),
    content_type: "text/javascript; charset=utf-8",
};

const TYPES: Asset = Asset {
    body: include_str!("../client/switchboard.d.ts"),
    content_type: "application/typescript; charset=utf-8",
};

const DEMO: Asset = Asset {
    body: include_str!("../client/index.html"),
    content_type: "text/html; charset=utf-8",
};

impl Asset {
    /// A strong ETag: the same bytes give the same tag on every node of a build, so a load
    /// balancer moving a browser between nodes still gets 304s.
    fn etag(&'static self, cell: &'static OnceLock<String>) -> &'static str {
        cell.get_or_init(|| {
            // SipHash with fixed keys: stable across processes (foldhash is seeded per run).
            #[allow(deprecated)]
            let mut h = std::hash::SipHasher::new();
            self.body.hash(&mut h);
            format!("\"{:016x}\"", h.finish())
        })
    }

    fn respond(&'static self, cell: &'static OnceLock<String>, req: &HttpRequest) -> HttpResponse {
        let etag = self.etag(cell);
        let matches = req
            .headers()
            .get_all(header::IF_NONE_MATCH)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                let t = t.trim();
                t == "*" || t.trim_start_matches("W/") == etag
            });
        let mut answer = if matches {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        answer
            .insert_header((header::ETAG, etag))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
        if matches {
            return answer.finish();
        }
        answer.content_type(self.content_type).body(self.body)
    }
}

async fn client(req: HttpRequest) -> HttpResponse {
    static TAG: OnceLock<String> = OnceLock::new();
    CLIENT.respond(&TAG, &req)
}

async fn types(req: HttpRequest) -> HttpResponse {
    static TAG: OnceLock<String> = OnceLock::new();
    TYPES.respond(&TAG, &req)
}

async fn demo(req: HttpRequest) -> HttpResponse {
    static TAG: OnceLock<String> = OnceLock::new();
    DEMO.respond(&TAG, &req)
}

/// Registers `/`, `/switchboard.js` and `/switchboard.d.ts` (GET and HEAD; actix answers
/// HEAD without the body).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/")
            .route(web::get().to(demo))
            .route(web::head().to(demo)),
    )
    .service(
        web::resource("/switchboard.js")
            .route(web::get().to(client))
            .route(web::head().to(client)),
    )
    .service(
        web::resource("/switchboard.d.ts")
            .route(web::get().to(types))
            .route(web::head().to(types)),
    );
}
