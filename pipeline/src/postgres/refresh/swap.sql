-- The swap, as one server-side block (one round trip: the exclusive locks are
-- never held while waiting on the network). Runs inside the swap's
-- transaction after `SET LOCAL lock_timeout`; any error rolls it all back.
--
-- 1. Locks the table. (Not its views first: locking a view locks what it
--    reads as the view's owner, who may not hold the privileges for that.
--    Their DROPs lock them, within the same lock_timeout; a reader that
--    crosses that order is a deadlock the server breaks, and floe retries.)
-- 2. Checks the table's constraints and indexes are still those floe built
--    on staging before the swap (else the swap is refused: run again).
-- 3. Reads what must hold on the replacements (carry.sql) while the old
--    relations still exist: the table's settings, then each view's
--    definition and settings, innermost first.
-- 4. Hands owned sequences to the staging table, drops the views and the
--    table, renames staging and its indexes and constraints into place, and
--    replays what it read.
DO {{tag}}
DECLARE
    floe_target regclass := to_regclass({{target}});
    floe_staging regclass := to_regclass({{staging}});
    floe_renames text[] := {{renames}};
    floe_kept_indexes text[] := {{kept_indexes}};
    floe_kept_constraints text[] := {{kept_constraints}};
    floe_structure text := {{structure}};
    floe_matviews text := {{matviews}};
    floe_dependents regclass[];
    floe_rel regclass;
    floe_like regclass;
    floe_stmt text;
    floe_later text[] := '{}';
    floe_i int;
    floe_n int;
BEGIN
    IF floe_target IS NOT NULL THEN
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', floe_target);
        SELECT coalesce(array_agg(q.rel ORDER BY q.depth DESC, q.rel), '{}') INTO floe_dependents
        FROM (
            WITH RECURSIVE deps(rel, depth) AS (
                SELECT r.ev_class, 1
                FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                  AND d.refobjid = floe_target AND r.ev_class <> floe_target
                UNION
                SELECT r.ev_class, deps.depth + 1
                FROM deps JOIN pg_depend d ON d.refobjid = deps.rel AND d.refclassid = 'pg_class'::regclass
                     AND d.classid = 'pg_rewrite'::regclass
                     JOIN pg_rewrite r ON r.oid = d.objid
                WHERE r.ev_class <> deps.rel
            )
            SELECT rel::regclass AS rel, max(depth) AS depth FROM deps GROUP BY rel
        ) q;
        FOREACH floe_rel IN ARRAY floe_dependents LOOP
            IF floe_matviews = 'refuse' AND (SELECT relkind FROM pg_class WHERE oid = floe_rel) = 'm' THEN
                RAISE EXCEPTION 'materialized view % depends on %', floe_rel, floe_target
                    USING ERRCODE = 'dependent_objects_still_exist',
                          HINT = 'set load.dependent_matviews = "refresh" to recompute it inside the swap';
            END IF;
        END LOOP;

        IF floe_structure IS DISTINCT FROM ({{structure_sql}}) THEN
            RAISE EXCEPTION 'the constraints, indexes or NOT NULL columns of % changed during the load', floe_target
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'nothing was replaced; run the refresh again to carry them over';
        END IF;

        floe_n := coalesce(array_length(floe_dependents, 1), 0);
        FOR floe_i IN 0 .. floe_n LOOP
            IF floe_i = 0 THEN
                floe_rel := floe_target;
                floe_like := floe_staging;
            ELSE
                floe_rel := floe_dependents[floe_n - floe_i + 1];
                floe_like := floe_rel;
                SELECT CASE c.relkind
                    WHEN 'v' THEN format('CREATE VIEW %s%s AS %s', floe_rel,
                                         ' WITH (' || array_to_string(c.reloptions, ', ') || ')',
                                         pg_get_viewdef(floe_rel))
                    ELSE format('CREATE MATERIALIZED VIEW %s%s%s AS %s WITH DATA', floe_rel,
                                ' WITH (' || array_to_string(c.reloptions, ', ') || ')',
                                ' TABLESPACE ' || quote_ident(s.spcname),
                                regexp_replace(pg_get_viewdef(floe_rel), ';\s*$', ''))
                    END
                INTO floe_stmt
                FROM pg_class c LEFT JOIN pg_tablespace s ON s.oid = c.reltablespace
                WHERE c.oid = floe_rel;
                floe_later := floe_later || floe_stmt;
                floe_later := floe_later || ARRAY(
                    SELECT pg_get_indexdef(x.indexrelid) FROM pg_index x
                    WHERE x.indrelid = floe_rel ORDER BY x.indexrelid);
            END IF;
            floe_later := floe_later || ARRAY(
                SELECT carried.stmt FROM ({{carry}}) carried ORDER BY carried.ord, carried.stmt);
        END LOOP;

        -- A serial column's sequence belongs to its column: hand it over, or
        -- dropping the old table would drop it under the carried default.
        FOR floe_stmt IN
            SELECT format('ALTER SEQUENCE %s OWNED BY %s.%I', d.objid::regclass, floe_staging, a.attname)
            FROM pg_depend d
                 JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                 JOIN pg_class q ON q.oid = d.objid AND q.relkind = 'S'
            WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.refobjid = floe_target AND d.deptype = 'a'
              AND EXISTS (SELECT 1 FROM pg_attribute s WHERE s.attrelid = floe_staging
                          AND s.attname = a.attname AND s.attnum > 0 AND NOT s.attisdropped)
        LOOP
            EXECUTE floe_stmt;
        END LOOP;

        FOREACH floe_rel IN ARRAY floe_dependents LOOP
            SELECT format('DROP %s %s', CASE relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END, floe_rel)
            INTO floe_stmt FROM pg_class WHERE oid = floe_rel;
            EXECUTE floe_stmt;
        END LOOP;
        EXECUTE format('DROP TABLE %s', floe_target);
    END IF;

    FOREACH floe_stmt IN ARRAY floe_renames LOOP
        EXECUTE floe_stmt;
    END LOOP;
    BEGIN
        FOREACH floe_stmt IN ARRAY floe_later LOOP
            EXECUTE regexp_replace(floe_stmt, ';\s*$', '');
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        -- Name what could not be carried over.
        RAISE EXCEPTION USING ERRCODE = SQLSTATE, MESSAGE = SQLERRM || ', carrying over: ' || floe_stmt;
    END;
END
{{tag}}
