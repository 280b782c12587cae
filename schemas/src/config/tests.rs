use super::*;

const MINIMAL: &str = r#"
[tables.t]
parquet = "x.parquet"
target = "t_cache"
"#;

fn parse(text: &str) -> Result<Config, SchemaError> {
    Config::parse(text, Path::new("floe.toml"))
}

#[test]
fn defaults_fill_what_is_not_said() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.load.batch_size, 8192);
    assert_eq!(c.target.schema, "public");
    let t = &c.tables["t"];
    assert_eq!(t.transform_sql(), "SELECT * FROM source");
    assert_eq!(t.source(), Some(SourceSpec::Parquet("x.parquet".into())));
}

#[test]
fn without_a_snowflake_section_downloads_keep_their_documented_bounds() {
    // A derived Default once gave 0 here: one download at a time and a 1 MiB budget.
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.snowflake.prefetch_threads, 4);
    assert_eq!(c.snowflake.max_buffered_bytes, 64 << 20);
    let d = SnowflakeConfig::default();
    assert_eq!((d.prefetch_threads, d.max_buffered_bytes), (4, 64 << 20));
}

#[test]
fn snowflake_query_defaults_to_the_whole_table() {
    let c = parse("[tables.t]\nsnowflake_table = \"TOPO\"\ntarget = \"t\"\n").unwrap();
    assert_eq!(
        c.tables["t"].source(),
        Some(SourceSpec::Snowflake {
            table: Some("TOPO".into()),
            query: "SELECT * FROM TOPO".into()
        })
    );
    assert!(c.find_table("topo").is_some());
    assert!(c.find_table("t").is_some());
}

#[test]
fn errors_name_file_table_and_key() {
    let bad_type = format!("{MINIMAL}columns = {{ v = \"numeric(6,9)\" }}\n");
    let e = parse(&bad_type).unwrap_err().to_string();
    assert!(
        e.contains("floe.toml") && e.contains("`t`") && e.contains("columns.v"),
        "{e}"
    );

    let bad_method = format!("{MINIMAL}indexes = [{{ columns = [\"g\"], method = \"rtree\" }}]\n");
    let e = parse(&bad_method).unwrap_err().to_string();
    assert!(
        e.contains("indexes[0].method") && e.contains("rtree"),
        "{e}"
    );

    for streams in [0, MAX_COPY_STREAMS + 1] {
        let e = parse(&format!("[load]\ncopy_streams = {streams}\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("load.copy_streams") && e.contains("between 1 and 16"),
            "{e}"
        );
    }
    assert_eq!(
        parse(&format!("[load]\ncopy_streams = 4\n{MINIMAL}"))
            .unwrap()
            .load
            .copy_streams,
        4
    );

    let typo = format!("{MINIMAL}primery_key = [\"id\"]\n");
    let e = parse(&typo).unwrap_err().to_string();
    assert!(e.contains("primery_key") && e.contains("floe.toml"), "{e}");

    let no_source = "[tables.t]\ntarget = \"t\"\n";
    let e = parse(no_source).unwrap_err().to_string();
    assert!(e.contains("no source"), "{e}");
}

#[test]
fn index_names_fit_postgres_stay_distinct_and_a_repeated_index_is_refused() {
    let long = "a".repeat(48);
    let c = parse(&format!(
        "[tables.t]\nparquet = \"x\"\ntarget = \"{long}\"\n\
         indexes = [{{ columns = [\"geom\"], method = \"gist\" }}, {{ columns = [\"geom\"] }}, \
         {{ columns = [\"a_rather_long_column_name_one\"] }}, {{ columns = [\"a_rather_long_column_name_two\"] }}]\n"
    ))
    .unwrap();
    let names = c.tables["t"].index_names();
    assert!(names.iter().all(|n| n.len() <= 63), "{names:?}");
    let distinct: std::collections::BTreeSet<_> = names.iter().collect();
    assert_eq!(distinct.len(), 4, "{names:?}");
    assert!(names[0].ends_with("_geom_gist_idx") && names[1].ends_with("_geom_btree_idx"));
    // Two long names differing only past byte 63 stay apart.
    assert_ne!(names[2], names[3]);
    assert_eq!(
        index_names("t", &c.tables["t"].indexes[2..3])[0],
        "t_a_rather_long_column_name_one_idx"
    );
    let e = parse(
        "[tables.t]\nparquet = \"x\"\ntarget = \"t\"\n\
         indexes = [{ columns = [\"geom\"] }, { columns = [\"geom\"] }]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("indexes[1]") && e.contains("listed twice"),
        "{e}"
    );
}

#[test]
fn snowflake_object_names_are_identifiers_or_refused() {
    for ok in [
        "FLUX_OPS_CENTER_TOPOLOGY",
        "grid.public.topo$2",
        "\"My Table\"",
        "DB.\"odd \"\"name\"\"\".T",
        "_T",
    ] {
        assert_eq!(snowflake_object_name(ok), Ok(()), "{ok}");
    }
    for bad in [
        "T; DROP TABLE X",
        "T --",
        "T WHERE 1=1",
        "1T",
        "A.B.C.D",
        "A..B",
        "\"unclosed",
        "\"\"",
        "../etc/passwd",
        "",
    ] {
        assert!(snowflake_object_name(bad).is_err(), "{bad}");
    }
    let e = parse("[tables.t]\nsnowflake_table = \"T; DROP TABLE X\"\ntarget = \"t\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("snowflake_table") && e.contains("not a Snowflake object name"),
        "{e}"
    );
}

#[test]
fn urls_and_configs_print_without_their_passwords() {
    for (url, shown) in [
        (
            "postgres://floe:s3cret@db:5432/grid",
            "postgres://floe:***@db:5432/grid",
        ),
        (
            "postgres://floe@db/grid?password=s3cret&sslmode=require",
            "postgres://floe@db/grid?password=***&sslmode=require",
        ),
        (
            "host=db user=floe password=s3cret dbname=grid",
            "host=db user=floe password=*** dbname=grid",
        ),
        ("postgres://db/grid", "postgres://db/grid"),
    ] {
        assert_eq!(redacted_url(url), shown);
        let arg: TargetUrl = url.parse().unwrap();
        assert!(!format!("{arg:?}").contains("s3cret"));
        assert_eq!(arg.expose(), url);
    }
    let c = parse(&format!(
        "[target]\nurl = \"postgres://floe:s3cret@db/grid\"\n[snowflake]\npassword = \"hunter2\"\ntoken = \"tok3n\"\nprivate_key_passphrase = \"phr4se\"\n{MINIMAL}"
    ))
    .unwrap();
    let shown = format!("{c:?}");
    for secret in ["s3cret", "hunter2", "tok3n", "phr4se"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert_eq!(
        c.snowflake.password.as_ref().map(Secret::expose),
        Some("hunter2")
    );
}

#[test]
fn config_durations_take_the_one_grammar() {
    let c = parse(&format!(
        "[load]\nlock_timeout = \"250ms\"\nstatement_timeout = \"1m 30s\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.load.lock_timeout, Duration::from_millis(250));
    assert_eq!(c.load.swap_lock_wait, Duration::from_millis(200));
    let e = parse(&format!("[load]\nlock_timeout = \"100ms\"\n{MINIMAL}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("load.swap_lock_wait"), "{e}");
    assert_eq!(c.load.statement_timeout, Duration::from_secs(90));
    let e = parse(&format!("[load]\nlock_timeout = \"5 parsecs\"\n{MINIMAL}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("parsecs"), "{e}");
}

#[test]
fn snowflake_environment_overrides_the_file() {
    let c = parse(&format!(
        "[snowflake]\naccount = \"acme\"\nuser = \"etl\"\npassword = \"hunter2\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(
        c.snowflake.base_url().unwrap(),
        "https://acme.snowflakecomputing.com:443"
    );
    let env = c.snowflake.with_overrides(|k| match k {
        "HOST" => Some("127.0.0.1".into()),
        "PORT" => Some("8085".into()),
        "PROTOCOL" => Some("http".into()),
        _ => None,
    });
    assert_eq!(env.base_url().unwrap(), "http://127.0.0.1:8085");
    assert_eq!(env.user.as_deref(), Some("etl"));
    assert!(!format!("{env:?}").contains("hunter2"));
}

#[test]
fn secrets_do_not_print() {
    let s = Secret::new("hunter2");
    assert!(!format!("{s:?}").contains("hunter2"));
}
