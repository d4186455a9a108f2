"""SQL helpers of the filter compiler: ISO-8601 instants as timestamptz.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The strict rule of projections.filters.iso_instant: YYYY-MM-DDTHH:MM:SS, an
# optional fraction (digits past microseconds ignored), then Z or +HH:MM/-HH:MM;
# a real calendar date, hours 00-23, no leap second. Anything else is NULL,
# never an error, so a filter can scan strings of any shape.
#
# IMMUTABLE is honest: the text carries its own offset and the arithmetic uses
# neither TimeZone nor DateStyle (unlike a text -> timestamptz cast, which is
# only STABLE and accepts far more, e.g. 'now', '24:00:00' or ':60' seconds).
_INSTANT = r"""
CREATE FUNCTION reporunner_iso_timestamptz(value text) RETURNS timestamptz
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
DECLARE
    part text[] := regexp_match(value COLLATE "C",
        '^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})'
        '(?:\.([0-9]+))?(Z|([+-])([0-9]{2}):([0-9]{2}))$');
    year int;
    month int;
    day int;
    month_days int;
    offset_minutes int := 0;
    micros bigint;
BEGIN
    IF part IS NULL THEN
        RETURN NULL;
    END IF;
    year := part[1]::int;
    month := part[2]::int;
    day := part[3]::int;
    month_days := CASE
        WHEN month = 2 AND (year % 4 = 0 AND year % 100 <> 0 OR year % 400 = 0) THEN 29
        WHEN month = 2 THEN 28
        WHEN month IN (4, 6, 9, 11) THEN 30
        ELSE 31
    END;
    IF year < 1 OR month NOT BETWEEN 1 AND 12 OR day NOT BETWEEN 1 AND month_days
        OR part[4]::int > 23 OR part[5]::int > 59 OR part[6]::int > 59 THEN
        RETURN NULL;
    END IF;
    IF part[9] IS NOT NULL THEN
        IF part[10]::int > 23 OR part[11]::int > 59 THEN
            RETURN NULL;
        END IF;
        offset_minutes := (part[10]::int * 60 + part[11]::int)
            * CASE part[9] WHEN '-' THEN -1 ELSE 1 END;
    END IF;
    micros := part[6]::bigint * 1000000 + coalesce(rpad(left(part[7], 6), 6, '0')::bigint, 0);
    RETURN (make_timestamp(year, month, day, part[4]::int, part[5]::int, 0)
            + micros * interval '1 microsecond'
            - offset_minutes * interval '1 minute') AT TIME ZONE 'UTC';
END;
$$
"""


def upgrade() -> None:
    op.execute(_INSTANT)


def downgrade() -> None:
    op.execute("DROP FUNCTION reporunner_iso_timestamptz(text)")
