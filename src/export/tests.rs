use super::*;

#[test]
fn csv_fields_are_quoted_only_when_needed() {
    let mut out = Vec::new();
    {
        let mut w = csv_writer(&mut out);
        w.write_record(["plain", "a,b", "say \"hi\"", "two\nlines", " pad", ""])
            .unwrap();
        w.write_record(["x", "", "", "", "", "y"]).unwrap();
        w.flush().unwrap();
    }
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\", pad,\r\nx,,,,,y\r\n"
    );
}

#[test]
fn utc_dates_are_civil() {
    assert_eq!(utc(0), "1970-01-01 00:00:00");
    assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
    assert_eq!(utc(1_795_430_096_000), "2026-11-23 10:34:56");
    assert_eq!(utc(253_402_300_799_000), "9999-12-31 23:59:59");
    assert_eq!(utc(u64::MAX), format!("{} ms after 1970", u64::MAX));
}

#[test]
fn json_rows_have_the_documented_columns_in_order() {
    let t: Trial = serde_json::from_value(serde_json::json!({
        "id": 3, "attempt": 1, "specialist": "s", "surface": null, "parent": null,
        "hypothesis": "h", "changes": {}, "config": {}, "status": "queued",
        "label": null, "decision": null, "score": null, "parent_score": null,
        "detail": null, "history": [], "trial_dir": null, "pgid": null,
        "train": null, "eval": null
    }))
    .unwrap();
    let row = Row::new(&t, None);
    let text = serde_json::to_string(&row).unwrap();
    let mut at = 0;
    for c in COLUMNS {
        let pos = text
            .find(&format!("\"{c}\":"))
            .unwrap_or_else(|| panic!("{c} missing"));
        assert!(pos >= at, "{c} out of order");
        at = pos;
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v.as_object().unwrap().len(), COLUMNS.len());
    assert_eq!(row.cells().len(), COLUMNS.len());
}
