-- What one relation (`floe_rel`: the cache table, or a view or materialized
-- view on it) has that must hold on its replacement, as statements naming it,
-- for the swap to run after the replacement has taken its name. Columns are
-- carried only where `floe_like` (the staging table, or the view itself) has
-- them. Rows: (order, statement).
SELECT ord, stmt FROM (
    -- The owner first: the grants below are then made as the owner's.
    SELECT 1 AS ord, format('ALTER %s %s OWNER TO %I', k.kw, floe_rel, pg_get_userbyid(c.relowner)) AS stmt
    FROM pg_class c, LATERAL (SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END AS kw) k
    WHERE c.oid = floe_rel AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
    UNION ALL
    SELECT 2, format('GRANT %s ON %s TO %s%s', a.privilege_type, floe_rel,
                     CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                     CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
    FROM pg_class c, LATERAL aclexplode(c.relacl) a
    WHERE c.oid = floe_rel AND a.grantee <> c.relowner
    UNION ALL
    SELECT 3, format('GRANT %s (%I) ON %s TO %s%s', x.privilege_type, a.attname, floe_rel,
                     CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(x.grantee)) END,
                     CASE WHEN x.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
    FROM pg_attribute a, LATERAL aclexplode(a.attacl) x
    WHERE a.attrelid = floe_rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attacl IS NOT NULL
      AND EXISTS (SELECT 1 FROM pg_attribute s WHERE s.attrelid = floe_like AND s.attname = a.attname AND s.attnum > 0 AND NOT s.attisdropped)
    UNION ALL
    -- Row-level security: losing it would let limited readers see every row.
    SELECT 4, format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', floe_rel)
    FROM pg_class c WHERE c.oid = floe_rel AND c.relrowsecurity
    UNION ALL
    SELECT 4, format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', floe_rel)
    FROM pg_class c WHERE c.oid = floe_rel AND c.relforcerowsecurity
    UNION ALL
    SELECT 5, format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s', p.polname, floe_rel,
                     CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                     CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                     (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END, ', ') FROM unnest(p.polroles) r),
                     ' USING (' || pg_get_expr(p.polqual, p.polrelid) || ')',
                     ' WITH CHECK (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')')
    FROM pg_policy p WHERE p.polrelid = floe_rel
    UNION ALL
    SELECT 6, format('COMMENT ON %s %s IS %L', k.kw, floe_rel, d.description)
    FROM pg_class c JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0,
         LATERAL (SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END AS kw) k
    WHERE c.oid = floe_rel
    UNION ALL
    SELECT 7, format('COMMENT ON COLUMN %s.%I IS %L', floe_rel, a.attname, d.description)
    FROM pg_attribute a JOIN pg_description d ON d.objoid = a.attrelid AND d.classoid = 'pg_class'::regclass AND d.objsubid = a.attnum
    WHERE a.attrelid = floe_rel AND a.attnum > 0 AND NOT a.attisdropped
      AND EXISTS (SELECT 1 FROM pg_attribute s WHERE s.attrelid = floe_like AND s.attname = a.attname AND s.attnum > 0 AND NOT s.attisdropped)
    UNION ALL
    SELECT 8, format('ALTER %s %s ALTER COLUMN %I SET DEFAULT %s',
                     CASE c.relkind WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END, floe_rel, a.attname, pg_get_expr(d.adbin, d.adrelid))
    FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum JOIN pg_class c ON c.oid = d.adrelid
    WHERE d.adrelid = floe_rel AND NOT a.attisdropped AND a.attgenerated = ''
      AND EXISTS (SELECT 1 FROM pg_attribute s WHERE s.attrelid = floe_like AND s.attname = a.attname AND s.attnum > 0 AND NOT s.attisdropped)
    UNION ALL
    -- Identity columns: a new sequence of the old one's name, settings and position.
    SELECT 9, format('ALTER TABLE %s ALTER COLUMN %I ADD GENERATED %s AS IDENTITY (SEQUENCE NAME %s INCREMENT BY %s MINVALUE %s MAXVALUE %s START WITH %s CACHE %s%s)',
                     floe_rel, a.attname, CASE a.attidentity WHEN 'a' THEN 'ALWAYS' ELSE 'BY DEFAULT' END,
                     q.seq, s.seqincrement, s.seqmin, s.seqmax, s.seqstart, s.seqcache,
                     CASE WHEN s.seqcycle THEN ' CYCLE' ELSE ' NO CYCLE' END)
    FROM pg_attribute a, LATERAL (SELECT pg_get_serial_sequence(floe_rel::text, a.attname)::regclass AS seq) q
         JOIN pg_sequence s ON s.seqrelid = q.seq
    WHERE a.attrelid = floe_rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity <> ''
      AND EXISTS (SELECT 1 FROM pg_attribute s WHERE s.attrelid = floe_like AND s.attname = a.attname AND s.attnum > 0 AND NOT s.attisdropped)
    UNION ALL
    SELECT 10, format('SELECT setval(pg_get_serial_sequence(%L, %L), %s)', floe_rel::text, a.attname, v.last)
    FROM pg_attribute a, LATERAL (SELECT pg_sequence_last_value(pg_get_serial_sequence(floe_rel::text, a.attname)::regclass) AS last) v
    WHERE a.attrelid = floe_rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity <> '' AND v.last IS NOT NULL
      AND EXISTS (SELECT 1 FROM pg_attribute s WHERE s.attrelid = floe_like AND s.attname = a.attname AND s.attnum > 0 AND NOT s.attisdropped)
    UNION ALL
    SELECT 11, format('ALTER TABLE %s ALTER COLUMN %I SET STATISTICS %s', floe_rel, a.attname, a.attstattarget)
    FROM pg_attribute a
    WHERE a.attrelid = floe_rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attstattarget >= 0
      AND EXISTS (SELECT 1 FROM pg_attribute s WHERE s.attrelid = floe_like AND s.attname = a.attname AND s.attnum > 0 AND NOT s.attisdropped)
    UNION ALL
    SELECT 11, format('ALTER TABLE %s ALTER COLUMN %I SET (%s)', floe_rel, a.attname, array_to_string(a.attoptions, ', '))
    FROM pg_attribute a
    WHERE a.attrelid = floe_rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attoptions IS NOT NULL
      AND EXISTS (SELECT 1 FROM pg_attribute s WHERE s.attrelid = floe_like AND s.attname = a.attname AND s.attnum > 0 AND NOT s.attisdropped)
    UNION ALL
    -- Storage options (autovacuum settings, fillfactor); a view's are in its CREATE VIEW.
    SELECT 12, format('ALTER %s %s SET (%s)', CASE c.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
                      floe_rel, array_to_string(c.reloptions, ', '))
    FROM pg_class c WHERE c.oid = floe_rel AND c.relkind IN ('r', 'm') AND c.reloptions IS NOT NULL
    UNION ALL
    -- Constraints built inside the swap: exclusion constraints and foreign keys to the table itself.
    SELECT 13, format('ALTER TABLE %s ADD CONSTRAINT %I %s', floe_rel, k.conname, pg_get_constraintdef(k.oid))
    FROM pg_constraint k
    WHERE k.conrelid = floe_rel AND k.conislocal
      AND (k.contype = 'x' OR (k.contype = 'f' AND k.confrelid = k.conrelid))
    UNION ALL
    SELECT 14, format('ALTER TABLE %s REPLICA IDENTITY %s', floe_rel,
                      CASE c.relreplident WHEN 'f' THEN 'FULL' WHEN 'n' THEN 'NOTHING'
                          ELSE 'USING INDEX ' || (SELECT quote_ident(i.relname) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                                                  WHERE x.indrelid = floe_rel AND x.indisreplident) END)
    FROM pg_class c WHERE c.oid = floe_rel AND c.relkind = 'r' AND c.relreplident IN ('f', 'n', 'i')
    UNION ALL
    SELECT 14, format('ALTER TABLE %s CLUSTER ON %I', floe_rel, i.relname)
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
    WHERE x.indrelid = floe_rel AND x.indisclustered AND i.relname = ANY (floe_kept_indexes)
    UNION ALL
    SELECT 15, format('COMMENT ON INDEX %I.%I IS %L', n.nspname, i.relname, d.description)
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = i.relnamespace
         JOIN pg_description d ON d.objoid = i.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
    WHERE x.indrelid = floe_rel AND (i.relname = ANY (floe_kept_indexes) OR floe_rel <> floe_target)
    UNION ALL
    SELECT 15, format('COMMENT ON CONSTRAINT %I ON %s IS %L', k.conname, floe_rel, d.description)
    FROM pg_constraint k JOIN pg_description d ON d.objoid = k.oid AND d.classoid = 'pg_constraint'::regclass
    WHERE k.conrelid = floe_rel AND k.conname = ANY (floe_kept_constraints)
    UNION ALL
    {{publications}}
    UNION ALL
    SELECT 17, pg_get_triggerdef(t.oid)
    FROM pg_trigger t WHERE t.tgrelid = floe_rel AND NOT t.tgisinternal
    UNION ALL
    SELECT 18, format('ALTER TABLE %s %s TRIGGER %I', floe_rel,
                      CASE t.tgenabled WHEN 'D' THEN 'DISABLE' WHEN 'R' THEN 'ENABLE REPLICA' ELSE 'ENABLE ALWAYS' END, t.tgname)
    FROM pg_trigger t WHERE t.tgrelid = floe_rel AND NOT t.tgisinternal AND t.tgenabled <> 'O'
    UNION ALL
    SELECT 18, format('COMMENT ON TRIGGER %I ON %s IS %L', t.tgname, floe_rel, d.description)
    FROM pg_trigger t JOIN pg_description d ON d.objoid = t.oid AND d.classoid = 'pg_trigger'::regclass
    WHERE t.tgrelid = floe_rel AND NOT t.tgisinternal
    UNION ALL
    SELECT 19, pg_get_ruledef(r.oid)
    FROM pg_rewrite r WHERE r.ev_class = floe_rel AND r.rulename <> '_RETURN'
    UNION ALL
    SELECT 20, pg_get_statisticsobjdef(x.oid)
    FROM pg_statistic_ext x WHERE x.stxrelid = floe_rel
) carried
