//! A full refresh replaces the cache table, and keeps everything readers
//! and owners set on it, or refuses before loading: read back from the
//! catalog, before and after, by name.

use std::path::Path;

use tokio_postgres::Client;

use crate::support::*;

/// 1,000 points loaded into `points_cache` of a fresh database: the
/// parquet's directory (kept alive), the config, the URL and a client.
async fn loaded_points(db: &str) -> (tempfile::TempDir, schemas::config::Config, String, Client) {
    let url = fresh_db(db).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("points.parquet");
    points_parquet(&file, 1_000, None);
    let config = parquet_config(&file, "points_cache", POINTS);
    assert_success(&run(&config, "t", &url, None).await);
    let client = connect(&url).await;
    (dir, config, url, client)
}

/// The next source: `rows` points in the same file, so the refresh loads new content.
fn more_points(dir: &Path, rows: i64) {
    points_parquet(&dir.join("points.parquet"), rows, None);
}

/// Everything the catalog says about relation `rel` and what hangs off it,
/// by name (oids change with the swap), one fact per line.
async fn catalog_of(client: &Client, rel: &str) -> Vec<String> {
    let sql = "\
        WITH r AS (SELECT $1::text::regclass AS r) \
        SELECT 'relation ' || c.relkind::text || ' owner=' || c.relowner::regrole || ' acl=' || coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(c.relacl) x), '-') \
               || ' rls=' || c.relrowsecurity || '/' || c.relforcerowsecurity || ' options=' || coalesce(c.reloptions::text, '-') \
               || ' identity=' || c.relreplident::text || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '-') \
               || ' view=' || coalesce(pg_get_viewdef(c.oid), '-') \
        FROM r, pg_class c WHERE c.oid = r.r \
        UNION ALL \
        SELECT 'column ' || a.attname || ' acl=' || coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(a.attacl) x), '-') || ' notnull=' || a.attnotnull \
               || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-') || ' identity=' || a.attidentity::text \
               || ' stats=' || a.attstattarget || ' comment=' || coalesce(col_description(a.attrelid, a.attnum), '-') \
        FROM r, pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
        WHERE a.attrelid = r.r AND a.attnum > 0 AND NOT a.attisdropped \
        UNION ALL \
        SELECT 'constraint ' || k.conname || ' ' || pg_get_constraintdef(k.oid) || ' valid=' || k.convalidated \
               || ' comment=' || coalesce(obj_description(k.oid, 'pg_constraint'), '-') \
        FROM r, pg_constraint k WHERE k.conrelid = r.r \
        UNION ALL \
        SELECT 'index ' || pg_get_indexdef(x.indexrelid) || ' clustered=' || x.indisclustered \
               || ' replident=' || x.indisreplident || ' comment=' || coalesce(obj_description(x.indexrelid, 'pg_class'), '-') \
        FROM r, pg_index x WHERE x.indrelid = r.r \
        UNION ALL \
        SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text \
               || ' comment=' || coalesce(obj_description(t.oid, 'pg_trigger'), '-') \
        FROM r, pg_trigger t WHERE t.tgrelid = r.r AND NOT t.tgisinternal \
        UNION ALL \
        SELECT 'policy ' || p.polname || ' ' || p.polpermissive || ' ' || p.polcmd::text || ' ' || p.polroles::regrole[]::text \
               || ' ' || coalesce(pg_get_expr(p.polqual, p.polrelid), '-') || ' ' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '-') \
        FROM r, pg_policy p WHERE p.polrelid = r.r \
        UNION ALL \
        SELECT 'publication ' || p.pubname || ' columns=' || coalesce(pr.prattrs::text, '-') \
               || ' where=' || coalesce(pg_get_expr(pr.prqual, pr.prrelid), '-') \
        FROM r, pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE pr.prrelid = r.r \
        UNION ALL \
        SELECT 'rule ' || pg_get_ruledef(w.oid) FROM r, pg_rewrite w WHERE w.ev_class = r.r AND w.rulename <> '_RETURN' \
        UNION ALL \
        SELECT 'statistics ' || pg_get_statisticsobjdef(s.oid) FROM r, pg_statistic_ext s WHERE s.stxrelid = r.r \
        UNION ALL \
        SELECT 'sequence ' || q.seqrelid::regclass || ' ' || format_type(q.seqtypid, NULL) || ' ' || q.seqstart || ' ' \
               || q.seqincrement || ' ' || q.seqmax || ' ' || q.seqmin || ' ' || q.seqcache || ' ' || q.seqcycle \
               || ' last=' || coalesce(pg_sequence_last_value(q.seqrelid)::text, '-') \
        FROM r, pg_depend d JOIN pg_sequence q ON q.seqrelid = d.objid \
        WHERE d.refobjid = r.r AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
        ORDER BY 1";
    client
        .query(sql, &[&rel])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Rows `role` may see (superusers bypass row-level security).
async fn rows_seen_by(client: &Client, role: &str) -> i64 {
    client
        .batch_execute(&format!("SET ROLE {role}"))
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM points_cache", &[])
        .await
        .unwrap()
        .get(0);
    client.batch_execute("RESET ROLE").await.unwrap();
    n
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn everything_set_on_the_cache_survives_the_swap() {
    let (dir, config, url, client) = loaded_points("swap_keeps_all").await;
    // GIVEN a cache the way a DBA and the map's roles leave it
    client
        .batch_execute(
            "CREATE ROLE map_owner; CREATE ROLE zone_reader; CREATE ROLE id_reader; \
             ALTER TABLE points_cache OWNER TO map_owner; \
             GRANT SELECT ON points_cache TO zone_reader; \
             GRANT SELECT, UPDATE ON points_cache TO id_reader WITH GRANT OPTION; \
             GRANT SELECT (id), UPDATE (location) ON points_cache TO zone_reader; \
             ALTER TABLE points_cache ENABLE ROW LEVEL SECURITY; \
             ALTER TABLE points_cache FORCE ROW LEVEL SECURITY; \
             CREATE POLICY near_only ON points_cache FOR SELECT TO zone_reader USING (id < 100); \
             CREATE POLICY not_the_first ON points_cache AS RESTRICTIVE FOR SELECT TO zone_reader USING (id >= 10); \
             CREATE POLICY edit ON points_cache FOR UPDATE TO id_reader USING (true) WITH CHECK (id > 0); \
             COMMENT ON TABLE points_cache IS 'the map''s points'; \
             COMMENT ON COLUMN points_cache.id IS 'the point''s key'; \
             ALTER TABLE points_cache SET (autovacuum_vacuum_scale_factor = 0.01, fillfactor = 90); \
             ALTER TABLE points_cache ALTER COLUMN location SET DEFAULT '{}'; \
             ALTER TABLE points_cache ALTER COLUMN location SET NOT NULL; \
             ALTER TABLE points_cache ALTER COLUMN id SET STATISTICS 500; \
             ALTER TABLE points_cache ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (START WITH 5000 INCREMENT BY 2); \
             SELECT nextval(pg_get_serial_sequence('points_cache', 'id')); \
             ALTER TABLE points_cache ADD CONSTRAINT id_positive CHECK (id > 0); \
             COMMENT ON CONSTRAINT id_positive ON points_cache IS 'ids start at 1'; \
             ALTER TABLE points_cache ADD CONSTRAINT short_location CHECK (length(location) < 200) NOT VALID; \
             CREATE TABLE zones (id bigint PRIMARY KEY); INSERT INTO zones SELECT generate_series(0, 5000); \
             ALTER TABLE points_cache ADD CONSTRAINT in_a_zone FOREIGN KEY (id) REFERENCES zones (id); \
             ALTER TABLE points_cache ADD CONSTRAINT one_location UNIQUE (location) DEFERRABLE; \
             CREATE INDEX points_first ON points_cache (id) WHERE id < 100; \
             CREATE INDEX points_lower ON points_cache (lower(location)) WITH (fillfactor = 70); \
             COMMENT ON INDEX points_first IS 'the first hundred'; \
             ALTER TABLE points_cache CLUSTER ON points_cache_pkey; \
             ALTER TABLE points_cache REPLICA IDENTITY USING INDEX points_cache_pkey; \
             CREATE PUBLICATION map_changes FOR TABLE points_cache WHERE (id < 500); \
             CREATE STATISTICS points_stats (ndistinct) ON id, location FROM points_cache; \
             CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$; \
             CREATE TRIGGER points_stamp BEFORE UPDATE ON points_cache FOR EACH ROW EXECUTE FUNCTION stamp(); \
             CREATE TRIGGER points_off AFTER INSERT ON points_cache FOR EACH ROW EXECUTE FUNCTION stamp(); \
             ALTER TABLE points_cache DISABLE TRIGGER points_off; \
             COMMENT ON TRIGGER points_stamp ON points_cache IS 'stamps edits'; \
             CREATE RULE no_truncating_deletes AS ON DELETE TO points_cache WHERE old.id = 0 DO INSTEAD NOTHING",
        )
        .await
        .unwrap();
    let before = catalog_of(&client, "points_cache").await;
    let facts = before.join("\n");
    for fact in [
        "owner=map_owner",
        "id_reader=r*w*/map_owner",
        "rls=true/true",
        "policy edit",
        "constraint in_a_zone FOREIGN KEY",
        "constraint short_location CHECK ((length(location) < 200)) NOT VALID",
        "constraint one_location UNIQUE (location) DEFERRABLE",
        "index CREATE INDEX points_lower",
        "clustered=true replident=true",
        "publication map_changes",
        "trigger CREATE TRIGGER points_off",
        "enabled=D",
        "rule CREATE RULE",
        "statistics CREATE STATISTICS",
        "last=5000",
        "column location acl=zone_reader=w/map_owner notnull=true default='{}'::text",
    ] {
        assert!(facts.contains(fact), "the setup has {fact}:\n{facts}");
    }
    let limited = rows_seen_by(&client, "zone_reader").await;
    assert_eq!(limited, 90, "the policies limit the reader to ids 10..99");

    // WHEN a full refresh replaces the table with new content
    more_points(dir.path(), 1_200);
    assert_success(&run(&config, "t", &url, None).await);

    // THEN the catalog says the same, and the rows are the new ones
    assert_eq!(catalog_of(&client, "points_cache").await, before);
    assert_eq!(
        count(&client, "SELECT count(*) FROM points_cache").await,
        1_200
    );
    assert_eq!(
        rows_seen_by(&client, "zone_reader").await,
        limited,
        "a reader limited by a policy sees the same rows after the swap, not every row"
    );
    let next: i64 = count(
        &client,
        "SELECT nextval(pg_get_serial_sequence('points_cache', 'id'))",
    )
    .await;
    assert_eq!(next, 5002, "the identity continues where it was");
    assert!(staging_tables(&client).await.is_empty());
}

#[tokio::test]
async fn new_rows_that_break_a_constraint_set_on_the_cache_fail_before_the_swap() {
    let (dir, config, url, client) = loaded_points("swap_keeps_check").await;
    client
        .batch_execute("ALTER TABLE points_cache ADD CONSTRAINT few_points CHECK (id <= 1000)")
        .await
        .unwrap();
    let before = fingerprint(&client, "points_cache").await;
    more_points(dir.path(), 1_001);
    let r = run(&config, "t", &url, None).await;
    let e = r.error.expect("the new rows break few_points");
    assert!(e.contains("few_points") && e.contains("constraint"), "{e}");
    // Checked row by row as the rows are copied: the row is named.
    assert!(e.contains("Failing row contains (1001,"), "{e}");
    assert_eq!(fingerprint(&client, "points_cache").await, before);
    assert!(staging_tables(&client).await.is_empty());
    // With the constraint dropped, the next run loads the rows.
    client
        .batch_execute("ALTER TABLE points_cache DROP CONSTRAINT few_points")
        .await
        .unwrap();
    assert_success(&run(&config, "t", &url, None).await);
    assert_eq!(
        count(&client, "SELECT count(*) FROM points_cache").await,
        1_001
    );
}

#[tokio::test]
async fn a_null_where_the_cache_is_not_null_fails_naming_the_row_and_the_next_run_loads() {
    let (dir, config, url, client) = loaded_points("swap_keeps_not_null").await;
    // GIVEN a DBA made a column of the cache NOT NULL
    client
        .batch_execute("ALTER TABLE points_cache ALTER COLUMN location SET NOT NULL")
        .await
        .unwrap();
    let before = fingerprint(&client, "points_cache").await;

    // WHEN the source's next rows have a NULL there, deep in the load
    more_points(dir.path(), 20_000);
    let nulls = parquet_config(
        &dir.path().join("points.parquet"),
        "points_cache",
        &POINTS.replace(
            "SELECT id, location,",
            "SELECT id, CASE WHEN id = 17000 THEN NULL ELSE location END AS location,",
        ),
    );
    let r = run(&nulls, "t", &url, None).await;

    // THEN the run fails naming the table, column, row and key, and the
    // cache, the sessions and the record are as a failed run leaves them
    let e = r
        .error
        .expect("a NULL where the cache is NOT NULL fails the run");
    for name in [
        "points_cache",
        "column location",
        "row 17000",
        "id=17000",
        "NOT NULL",
    ] {
        assert!(e.contains(name), "{name:?} is not named in: {e}");
    }
    assert_eq!(fingerprint(&client, "points_cache").await, before);
    assert!(staging_tables(&client).await.is_empty());
    assert_eq!(floe_idle_in_transaction(&client).await, 0);
    assert_eq!(newest_run_status(&client).await, "failed");

    // AND the next run with the rows whole loads them, the column still NOT NULL
    assert_success(&run(&config, "t", &url, None).await);
    assert_eq!(
        count(&client, "SELECT count(*) FROM points_cache").await,
        20_000
    );
    let not_null: bool = client
        .query_one(
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'points_cache'::regclass AND attname = 'location'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(not_null, "the DBA's NOT NULL is kept");
}

#[tokio::test]
async fn a_not_null_or_check_a_dba_drops_during_the_load_stays_dropped() {
    // GIVEN transformers loaded through the emulator, a NOT NULL and a
    // CHECK set on the cache, which the next load's staging table declares
    let emulator = emulator::Emulator::start(emulator::EmulatorConfig {
        chunk_rows: 2_000,
        ..emulator::EmulatorConfig::new(grid_dir(), "floe", "pw")
    })
    .await
    .expect("emulator starts");
    let mut config = shipped_config();
    config.snowflake = emulator_login(emulator.port(), "floe", "pw");
    let url = fresh_db("swap_keeps_dropped_meanwhile").await;
    assert_success(&run(&config, "transformers", &url, None).await);
    let client = connect(&url).await;
    client
        .batch_execute(
            "ALTER TABLE transformers_cache ALTER COLUMN feeder_id SET NOT NULL; \
             ALTER TABLE transformers_cache ADD CONSTRAINT kva_positive CHECK (kva_rating > 0); \
             ALTER TABLE transformers_cache ADD CONSTRAINT phase_known CHECK (phase <> '')",
        )
        .await
        .unwrap();

    // WHEN a DBA drops the NOT NULL and one CHECK while the rows are copied
    // (a chunk taking 3 s holds floe inside its COPY)
    hold_next_copy(&emulator);
    let dba = {
        let url = url.clone();
        tokio::spawn(async move {
            let client = connect(&url).await;
            for _ in 0..100 {
                if floe_copying(&client).await {
                    client
                        .batch_execute(
                            "ALTER TABLE transformers_cache ALTER COLUMN feeder_id DROP NOT NULL; \
                             ALTER TABLE transformers_cache DROP CONSTRAINT kva_positive",
                        )
                        .await
                        .unwrap();
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            false
        })
    };
    assert_success(&run(&config, "transformers", &url, None).await);
    assert!(dba.await.unwrap(), "never saw floe's COPY");

    // THEN the new table has what the cache had at the swap: the CHECK
    // left, not the NOT NULL or the CHECK dropped meanwhile
    let facts = catalog_of(&client, "transformers_cache").await.join("\n");
    assert!(facts.contains("constraint phase_known CHECK"), "{facts}");
    assert!(!facts.contains("kva_positive"), "{facts}");
    assert!(
        facts.contains("column feeder_id acl=- notnull=false"),
        "{facts}"
    );
    assert!(staging_tables(&client).await.is_empty());
}

#[tokio::test]
async fn views_on_the_cache_are_recreated_with_their_settings_and_answer_from_the_new_rows() {
    let (dir, config, url, client) = loaded_points("swap_keeps_views").await;
    client
        .batch_execute(
            "CREATE ROLE view_owner; CREATE ROLE view_app; \
             CREATE VIEW near_points WITH (security_barrier) AS SELECT id, geom FROM points_cache WHERE id < 10 \
                 WITH LOCAL CHECK OPTION; \
             CREATE VIEW nearest (point_id) AS SELECT id FROM near_points; \
             CREATE VIEW both_kinds WITH (security_invoker = true) AS \
                 SELECT n.point_id, p.location FROM nearest n JOIN points_cache p ON p.id = n.point_id; \
             ALTER VIEW nearest OWNER TO view_owner; GRANT SELECT ON near_points TO view_owner; \
             GRANT SELECT ON near_points, nearest TO view_app; GRANT SELECT (point_id) ON both_kinds TO view_app; \
             COMMENT ON VIEW nearest IS 'the map''s nearest points'; \
             COMMENT ON COLUMN nearest.point_id IS 'a point'",
        )
        .await
        .unwrap();
    let views = ["near_points", "nearest", "both_kinds"];
    let mut before = Vec::new();
    for v in views {
        before.push(catalog_of(&client, v).await);
    }
    let relation = before[0]
        .iter()
        .find(|f| f.starts_with("relation"))
        .unwrap();
    assert!(
        relation.contains("check_option=local") && relation.contains("security_barrier=true"),
        "{relation}"
    );

    more_points(dir.path(), 1_200);
    // Points 1..9 move: the views must read the new table.
    client
        .batch_execute("DELETE FROM points_cache WHERE id = 5")
        .await
        .unwrap();
    assert_eq!(count(&client, "SELECT count(*) FROM both_kinds").await, 8);
    assert_success(&run(&config, "t", &url, None).await);

    for (v, before) in views.iter().zip(&before) {
        assert_eq!(&catalog_of(&client, v).await, before, "view {v}");
    }
    assert_eq!(count(&client, "SELECT count(*) FROM nearest").await, 9);
    assert_eq!(count(&client, "SELECT count(*) FROM both_kinds").await, 9);
    assert!(staging_tables(&client).await.is_empty());
}

#[tokio::test]
async fn a_materialized_view_is_refused_before_loading_unless_it_may_be_recomputed() {
    let (dir, mut config, url, client) = loaded_points("swap_keeps_matview").await;
    client
        .batch_execute(
            "CREATE ROLE matview_app; \
             CREATE MATERIALIZED VIEW point_count AS SELECT count(*) AS n FROM points_cache; \
             CREATE UNIQUE INDEX point_count_n ON point_count (n); \
             GRANT SELECT ON point_count TO matview_app; \
             CREATE VIEW point_count_text AS SELECT n::text FROM point_count",
        )
        .await
        .unwrap();
    let before = fingerprint(&client, "points_cache").await;
    more_points(dir.path(), 1_200);
    let r = run(&config, "t", &url, None).await;
    let e = r.error.expect("refused");
    assert!(
        e.contains("materialized view point_count") && e.contains("load.dependent_matviews"),
        "{e}"
    );
    assert_eq!(r.rows_synced, 0, "nothing was read into staging");
    assert!(staging_tables(&client).await.is_empty());
    assert_eq!(fingerprint(&client, "points_cache").await, before);

    // With `refresh`, it is recreated, recomputed, and keeps its index and grant.
    let matview = catalog_of(&client, "point_count").await;
    let on_top = catalog_of(&client, "point_count_text").await;
    config.load.dependent_matviews = schemas::config::DependentMatviews::Refresh;
    assert_success(&run(&config, "t", &url, None).await);
    assert_eq!(count(&client, "SELECT n FROM point_count").await, 1_200);
    assert_eq!(catalog_of(&client, "point_count").await, matview);
    assert_eq!(catalog_of(&client, "point_count_text").await, on_top);
}

#[tokio::test]
async fn what_floe_cannot_carry_is_refused_before_loading_naming_each_object_and_the_way_out() {
    let (dir, config, url, client) = loaded_points("swap_keeps_refused").await;
    client
        .batch_execute(
            "CREATE TABLE visits (point_id bigint REFERENCES points_cache (id)); \
             CREATE FUNCTION first_point() RETURNS SETOF points_cache LANGUAGE sql \
                 BEGIN ATOMIC SELECT * FROM points_cache ORDER BY id LIMIT 1; END",
        )
        .await
        .unwrap();
    let before = fingerprint(&client, "points_cache").await;
    more_points(dir.path(), 1_200);
    let r = run(&config, "t", &url, None).await;
    let e = r.error.expect("refused");
    assert!(
        e.contains("foreign key visits_point_id_fkey of visits")
            && e.contains("floe does not change other tables"),
        "{e}"
    );
    assert!(
        e.contains("function first_point()") && e.contains("floe cannot recreate it"),
        "{e}"
    );
    assert!(e.contains("--incremental"), "{e}");
    assert_eq!(r.rows_synced, 0);
    assert!(staging_tables(&client).await.is_empty());
    assert_eq!(fingerprint(&client, "points_cache").await, before);
}

#[tokio::test]
async fn inheritance_either_way_and_a_partitioned_target_are_refused_before_loading() {
    let (dir, config, url, client) = loaded_points("swap_keeps_inheritance").await;
    let before = fingerprint(&client, "points_cache").await;
    more_points(dir.path(), 1_200);
    let parted = parquet_config(&dir.path().join("points.parquet"), "parted_points", POINTS);
    for (what, sql, config, named) in [
        (
            "a table inheriting from the cache",
            "CREATE TABLE more_points () INHERITS (points_cache)",
            &config,
            "table inheritance (more_points inherits from points_cache)",
        ),
        (
            "the cache inheriting from another table",
            "DROP TABLE more_points; CREATE TABLE all_points (id bigint); \
             ALTER TABLE points_cache INHERIT all_points",
            &config,
            "table inheritance (points_cache inherits from all_points)",
        ),
        (
            "a partitioned table where the cache goes",
            "CREATE TABLE parted_points (id bigint, location text, geom geometry(Point, 4326)) \
             PARTITION BY RANGE (id); \
             CREATE TABLE parted_points_all PARTITION OF parted_points DEFAULT",
            &parted,
            "partitioned table parted_points",
        ),
    ] {
        client.batch_execute(sql).await.unwrap();
        let r = run(config, "t", &url, None).await;
        assert_eq!(r.rows_synced, 0, "{what}");
        let e = r.error.expect("refused");
        assert!(
            e.contains(named) && e.contains("floe replaces plain tables only"),
            "{what}: {e}"
        );
        assert_eq!(fingerprint(&client, "points_cache").await, before, "{what}");
        assert!(staging_tables(&client).await.is_empty(), "{what}");
    }

    // Once the cache stands alone again, it loads.
    client
        .batch_execute("ALTER TABLE points_cache NO INHERIT all_points")
        .await
        .unwrap();
    assert_success(&run(&config, "t", &url, None).await);
    assert_eq!(
        count(&client, "SELECT count(*) FROM points_cache").await,
        1_200
    );
}

#[tokio::test]
async fn a_floe_role_that_is_no_superuser_hands_the_table_back_to_its_owner_once_a_member() {
    // GIVEN floe loading as a plain role, and a DBA handing the cache to another owner
    let url = fresh_db("swap_keeps_owner").await;
    let admin = connect(&url).await;
    admin
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS postgis; \
             DO $$ BEGIN CREATE ROLE floe_loader LOGIN; CREATE ROLE cache_owner; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
             GRANT CREATE ON SCHEMA public TO floe_loader",
        )
        .await
        .unwrap();
    admin
        .batch_execute("GRANT CREATE ON DATABASE swap_keeps_owner TO floe_loader")
        .await
        .unwrap();
    let as_floe = url.replacen("postgres@", "floe_loader@", 1);
    let dir = tempfile::tempdir().unwrap();
    points_parquet(&dir.path().join("points.parquet"), 1_000, None);
    let config = parquet_config(&dir.path().join("points.parquet"), "points_cache", POINTS);
    assert_success(&run(&config, "t", &as_floe, None).await);
    admin
        .batch_execute("ALTER TABLE points_cache OWNER TO cache_owner")
        .await
        .unwrap();
    let before = fingerprint(&admin, "points_cache").await;

    // WHEN floe's role is not a member of the owner: refused before loading
    more_points(dir.path(), 1_200);
    let r = run(&config, "t", &as_floe, None).await;
    let e = r.error.expect("refused");
    assert!(
        e.contains("owned by cache_owner (floe gives the replacement its owner back: GRANT cache_owner TO floe_loader)"),
        "{e}"
    );
    assert!(
        e.contains("GRANT CREATE ON SCHEMA public TO cache_owner"),
        "ALTER TABLE … OWNER TO needs it: {e}"
    );
    assert_eq!(fingerprint(&admin, "points_cache").await, before);
    assert!(staging_tables(&admin).await.is_empty());

    // THEN, once a member, the refresh runs and the owner stays
    admin
        .batch_execute(
            "GRANT cache_owner TO floe_loader; GRANT CREATE ON SCHEMA public TO cache_owner",
        )
        .await
        .unwrap();
    assert_success(&run(&config, "t", &as_floe, None).await);
    let owner: String = admin
        .query_one(
            "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'points_cache'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "cache_owner");
    assert_eq!(
        count(&admin, "SELECT count(*) FROM points_cache").await,
        1_200
    );
}

#[tokio::test]
async fn the_replacement_lives_in_the_tablespace_the_cache_was_moved_to() {
    let (dir, config, url, client) = loaded_points("swap_keeps_tablespace").await;
    // A tablespace directory owned by the server's user, as Postgres requires.
    let location = tempfile::tempdir().unwrap();
    let data = std::fs::metadata(cluster().data_dir()).unwrap();
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::chown(location.path(), Some(data.uid()), Some(data.gid())).unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLESPACE cache_space LOCATION '{}'",
            location.path().display()
        ))
        .await
        .unwrap();
    client
        .batch_execute("ALTER TABLE points_cache SET TABLESPACE cache_space")
        .await
        .unwrap();
    more_points(dir.path(), 1_200);
    assert_success(&run(&config, "t", &url, None).await);
    let space: Option<String> = client
        .query_one(
            "SELECT t.spcname::text FROM pg_class c LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace \
             WHERE c.oid = 'points_cache'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(space.as_deref(), Some("cache_space"));
    assert_eq!(
        count(&client, "SELECT count(*) FROM points_cache").await,
        1_200
    );
    // The tablespace must be empty before the directory goes.
    client
        .batch_execute("DROP TABLE points_cache")
        .await
        .unwrap();
    client
        .batch_execute("DROP TABLESPACE cache_space")
        .await
        .unwrap();
}
