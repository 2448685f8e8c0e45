//! Realistic JSON for measuring compression: lists of records with the usual kinds of
//! fields, their values from a fixed pseudo-random sequence (never repeated text, which
//! compresses far better than real traffic). Used by the unit tests here, in src/frame.rs and
//! src/batch.rs, and by examples/batch_cost.rs; not part of the server.

/// Realistic JSON of about `size` bytes: a list of records with the usual kinds of
/// fields, their values drawn from a fixed pseudo-random sequence (not repeated text).
pub fn records(size: usize) -> String {
    records_from(size, 0)
}

/// [`records`] with other values: `variant` picks where in the sequence they start, so
/// consecutive publications share their shape (the field names) but not their values.
pub fn records_from(size: usize, variant: u64) -> String {
    const NAMES: &[&str] = &[
        "Alice", "Bruno", "Chiara", "Dmitri", "Emeka", "Fatima", "Grace", "Hiroshi", "Ines",
        "Jonas", "Kavya", "Lucas", "Mei", "Noah", "Olga", "Pedro",
    ];
    const CITIES: &[&str] = &[
        "Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Porto", "Lyon", "Austin",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ variant.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    if size < 100 {
        // Too short for one record: a price tick of about 60 bytes.
        const SYMBOLS: &[&str] = &["EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCHF"];
        let mid = 100 + next(900);
        return format!(
            r#"{{"sym":"{}","bid":{mid}.{:02},"ask":{mid}.{:02},"t":{}}}"#,
            SYMBOLS[next(SYMBOLS.len() as u64) as usize],
            next(50),
            50 + next(50),
            1_764_460_800_000 + next(1_000_000),
        );
    }
    let mut out = String::from("[");
    let mut id = 0;
    while out.len() + 2 < size {
        id += 1;
        let name = NAMES[next(NAMES.len() as u64) as usize];
        let record = format!(
            r#"{{"id":{},"user":"{}{}","city":"{}","score":{}.{},"active":{},"updated_at":"2026-{:02}-{:02}T{:02}:{:02}:{:02}Z","tags":["t{}","t{}"]}}"#,
            1000 + next(90_000),
            name.to_lowercase(),
            next(1000),
            CITIES[next(CITIES.len() as u64) as usize],
            next(100),
            next(10),
            next(2) == 0,
            1 + next(12),
            1 + next(28),
            next(24),
            next(60),
            next(60),
            next(50),
            next(50),
        );
        if id > 1 && out.len() + record.len() + 2 > size {
            break;
        }
        if id > 1 {
            out.push(',');
        }
        out.push_str(&record);
    }
    out.push(']');
    out
}

/// A `message` frame's JSON text of about `size` bytes, carrying [`records`].
pub fn message(size: usize) -> String {
    let head = r#"{"type":"message","channel":"prices:eu","offset":123456,"data":"#;
    format!("{head}{}}}", records(size.saturating_sub(head.len() + 1)))
}

/// A `message` frame's JSON text whose `data` is about `size` bytes ([`records_from`],
/// varying with `offset`): one of a channel's stream of publications.
pub fn publication(size: usize, offset: u64) -> String {
    let head = format!(r#"{{"type":"message","channel":"prices:eu","offset":{offset},"data":"#);
    format!("{head}{}}}", records_from(size, offset))
}
