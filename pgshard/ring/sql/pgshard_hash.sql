-- pgshard.hash(): the SQL twin of pgshard's shard-key token.
--
-- MurmurHash3 x86_32, seed 0, over the UTF-8 bytes of the key's text form, returned as the
-- unsigned 32-bit value in a bigint. Bit-exact with Python
-- mmh3.hash(key.encode(), seed=0, signed=False) (property-tested).
--
-- Strategy: all arithmetic is bigint masked to 32 bits. A 32x32-bit multiply would overflow
-- a signed bigint, so each multiply by a constant C is split into C's 16-bit halves:
--   (k * C) mod 2^32 = (k * C_lo + ((k * C_hi) mod 2^16) << 16) mod 2^32
-- where every partial product stays below 2^49.
--   c1 = 0xcc9e2d51 -> hi 52382, lo 11601      c2 = 0x1b873593 -> hi 7047,  lo 13715
--   f1 = 0x85ebca6b -> hi 34283, lo 51819      f2 = 0xc2b2ae35 -> hi 49842, lo 44597
--   0xe6546b64 = 3864292196                    0xffffffff = 4294967295

CREATE SCHEMA IF NOT EXISTS pgshard;

CREATE OR REPLACE FUNCTION pgshard.hash(text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
DECLARE
    b bytea := convert_to($1, 'UTF8');
    n integer := octet_length(b);
    body_end integer := n - (n % 4);
    i integer := 0;
    h bigint := 0;
    k bigint;
BEGIN
    WHILE i < body_end LOOP
        k := get_byte(b, i)::bigint
             | (get_byte(b, i + 1)::bigint << 8)
             | (get_byte(b, i + 2)::bigint << 16)
             | (get_byte(b, i + 3)::bigint << 24);
        k := (k * 11601 + (((k * 52382) & 65535) << 16)) & 4294967295;
        k := ((k << 15) | (k >> 17)) & 4294967295;
        k := (k * 13715 + (((k * 7047) & 65535) << 16)) & 4294967295;
        h := h # k;
        h := ((h << 13) | (h >> 19)) & 4294967295;
        h := (h * 5 + 3864292196) & 4294967295;
        i := i + 4;
    END LOOP;

    IF n > body_end THEN
        k := get_byte(b, body_end)::bigint;
        IF n - body_end >= 2 THEN
            k := k | (get_byte(b, body_end + 1)::bigint << 8);
        END IF;
        IF n - body_end = 3 THEN
            k := k | (get_byte(b, body_end + 2)::bigint << 16);
        END IF;
        k := (k * 11601 + (((k * 52382) & 65535) << 16)) & 4294967295;
        k := ((k << 15) | (k >> 17)) & 4294967295;
        k := (k * 13715 + (((k * 7047) & 65535) << 16)) & 4294967295;
        h := h # k;
    END IF;

    h := h # n;
    h := h # (h >> 16);
    h := (h * 51819 + (((h * 34283) & 65535) << 16)) & 4294967295;
    h := h # (h >> 13);
    h := (h * 44597 + (((h * 49842) & 65535) << 16)) & 4294967295;
    RETURN h # (h >> 16);
END
$fn$;

COMMENT ON FUNCTION pgshard.hash(text) IS
    'MurmurHash3 x86_32 (seed 0) of the UTF-8 bytes, unsigned, as bigint: pgshard''s shard-key token';

-- Integer and uuid keys hash their PostgreSQL text output form, like the router does.
CREATE OR REPLACE FUNCTION pgshard.hash(bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$ SELECT pgshard.hash($1::text) $fn$;

CREATE OR REPLACE FUNCTION pgshard.hash(uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$ SELECT pgshard.hash($1::text) $fn$;
