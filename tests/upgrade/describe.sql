-- Everything CREATE EXTENSION eventstore makes, one sorted line per fact: tests/shell/upgrade.sh
-- compares this description of an updated database with that of a fresh install.
\pset tuples_only on
\pset format unaligned
WITH ext AS (SELECT oid, extversion, extconfig, extcondition FROM pg_extension WHERE extname = 'eventstore'),
members AS (
    SELECT d.classid, d.objid, d.objsubid FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
facts(fact) AS (
    SELECT 'version ' || extversion FROM ext
    UNION ALL SELECT 'config ' || extconfig::regclass[]::text || ' ' || coalesce(extcondition::text, '') FROM ext
    UNION ALL SELECT 'member ' || pg_describe_object(classid, objid, objsubid) FROM members
    UNION ALL SELECT 'function ' || pg_get_functiondef(p.oid) || ' acl ' || coalesce(p.proacl::text, 'default')
      FROM pg_proc p WHERE p.pronamespace = 'eventstore'::regnamespace
    UNION ALL SELECT 'relation ' || c.relname || ' kind ' || c.relkind::text || ' acl ' || coalesce(c.relacl::text, 'default')
           || ' rls ' || c.relrowsecurity || '/' || c.relforcerowsecurity || ' options ' || coalesce(c.reloptions::text, '')
      FROM pg_class c WHERE c.relnamespace = 'eventstore'::regnamespace
    UNION ALL SELECT 'column ' || c.relname || '.' || a.attnum || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || ' notnull ' || a.attnotnull || ' default ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '')
      FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
     WHERE c.relnamespace = 'eventstore'::regnamespace
    UNION ALL SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
     WHERE c.relnamespace = 'eventstore'::regnamespace
    UNION ALL SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
      FROM pg_constraint WHERE connamespace = 'eventstore'::regnamespace
    UNION ALL SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid) FROM pg_class c
     WHERE c.relnamespace = 'eventstore'::regnamespace AND c.relkind = 'v'
    UNION ALL SELECT 'policy ' || polrelid::regclass || ' ' || polname || ' ' || polcmd::text || ' ' || polpermissive
           || ' ' || polroles::regrole[]::text || ' ' || coalesce(pg_get_expr(polqual, polrelid), '')
           || ' ' || coalesce(pg_get_expr(polwithcheck, polrelid), '')
      FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE c.relnamespace = 'eventstore'::regnamespace
    UNION ALL SELECT 'sequence ' || seqrelid::regclass || ' ' || seqtypid::regtype || ' ' || seqstart || ' '
           || seqincrement || ' ' || seqmax || ' ' || seqmin || ' ' || seqcache || ' ' || seqcycle
      FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid WHERE c.relnamespace = 'eventstore'::regnamespace
    UNION ALL SELECT 'type ' || t.typname || ' acl ' || coalesce(t.typacl::text, 'default') FROM pg_type t
     WHERE t.typnamespace = 'eventstore'::regnamespace
    UNION ALL SELECT 'trigger ' || tgrelid::regclass || ' ' || pg_get_triggerdef(t.oid) FROM pg_trigger t
      JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = 'eventstore'::regnamespace
    UNION ALL SELECT 'comment ' || pg_describe_object(d.classoid, d.objoid, d.objsubid) || ': ' || d.description
      FROM pg_description d JOIN members m ON m.classid = d.classoid AND m.objid = d.objoid
    UNION ALL SELECT 'schema acl ' || coalesce(nspacl::text, 'default') FROM pg_namespace WHERE nspname = 'eventstore'
    UNION ALL SELECT 'role ' || rolname || ' login ' || rolcanlogin FROM pg_roles WHERE rolname LIKE 'eventstore\_%'
)
SELECT fact FROM facts ORDER BY fact;
