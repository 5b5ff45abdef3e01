-- The benchmark's dataset: a cycling-trip platform's tables with the
-- entropy of production data (words drawn from a skewed vocabulary, jsonb
-- documents, numeric, timestamps, float arrays, and about 10 % of the
-- bytes in incompressible bytea), generated deterministically: the same
-- :rows give the same bytes (setseed, one backend, no parallel plans).
--
--   psql -v rows=1400000 -f scripts/bench-data.sql   (about 1 GB)
--
-- pgbench's tables compress about 35:1 and md5 text about 2:1; this data
-- compresses about 3:1 with zstd -3, like the dumps operators send.
\set ON_ERROR_STOP 1
SET max_parallel_workers_per_gather = 0;
SET synchronous_commit = off;
SELECT setseed(0.20261202);

-- k words: n (Zipf-like: small n far more often) spelled in base 50 with
-- syllables, from a vocabulary of 8,000 words of one to three syllables.
CREATE FUNCTION pg_temp.words(k int) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT string_agg(s[1 + n % 50]
                      || CASE WHEN n >= 50 THEN s[1 + (n / 50) % 50] ELSE '' END
                      || CASE WHEN n >= 2500 THEN s[1 + n / 2500] ELSE '' END, ' ')
    FROM (SELECT floor(7999 * random() ^ 3)::int AS n FROM generate_series(1, k)) drawn,
         (SELECT '{ka,ri,to,ne,sa,lu,mi,po,ve,da,go,ze,ba,fi,lo,ru,te,ni,so,ma,pe,ki,du,ra,ho,li,na,vo,se,tu,bre,cha,dro,fla,gri,kle,pra,sti,tra,vel,an,en,in,on,un,ar,er,or,ur,al}'::text[] AS s) syllables
$$;

CREATE TABLE riders (
    id integer PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL,
    country char(2) NOT NULL,
    joined_at timestamptz NOT NULL,
    weight_kg numeric(5,1),
    bio text
);
INSERT INTO riders
SELECT g,
       initcap(pg_temp.words(2)),
       replace(pg_temp.words(1), ' ', '') || g || '@' || (ARRAY['mail.example','ride.example','post.example'])[1 + g % 3],
       (ARRAY['DE','FR','ES','IT','NL','BE','PT','AT','CH','DK'])[1 + floor(10 * random() ^ 2)::int],
       timestamptz '2015-01-01' + random() * interval '3650 days',
       round((50 + 50 * random())::numeric, 1),
       CASE WHEN random() < 0.6 THEN pg_temp.words(5 + (random() * 25)::int) END
FROM generate_series(1, greatest(:rows / 20, 1000)) g;

CREATE TABLE trips (
    id bigint PRIMARY KEY,
    rider_id integer NOT NULL REFERENCES riders,
    started_at timestamptz NOT NULL,
    ended_at timestamptz NOT NULL,
    distance_km numeric(8,2) NOT NULL,
    elevation_m integer,
    title text NOT NULL,
    notes text,
    route jsonb NOT NULL,
    speeds double precision[] NOT NULL,
    photo bytea
);
INSERT INTO trips
SELECT g,
       1 + floor(random() ^ 2 * greatest(:rows / 20, 1000))::int,
       s,
       s + (20 + random() * 400) * interval '1 minute',
       round((2 + 150 * random() ^ 2)::numeric, 2),
       (random() * 2500)::int,
       initcap(pg_temp.words(2 + (random() * 5)::int)),
       CASE WHEN random() < 0.8 THEN pg_temp.words(8 + (random() * 40)::int) END,
       jsonb_build_object(
           'surface', (ARRAY['asphalt','gravel','dirt','cobbles','mixed'])[1 + floor(5 * random() ^ 2)::int],
           'tags', to_jsonb(string_to_array(pg_temp.words(1 + (random() * 4)::int), ' ')),
           'start', jsonb_build_object('lat', round((36 + random() * 20)::numeric, 5), 'lon', round((-9 + random() * 30)::numeric, 5)),
           'weather', jsonb_build_object('temp_c', round((random() * 35 - 5)::numeric, 1), 'wind_kmh', (random() * 60)::int,
                                         'sky', (ARRAY['clear','cloudy','rain','fog'])[1 + floor(4 * random() ^ 2)::int]),
           'group', random() < 0.3,
           'device', (ARRAY['garmin','wahoo','phone','hammerhead'])[1 + floor(4 * random() ^ 2)::int] || '-' || (random() * 40)::int),
       ARRAY(SELECT round((10 + random() * 35)::numeric, 2)::float8 FROM generate_series(1, 8 + (g % 9)::int)),
       CASE WHEN random() < 0.5 THEN
           decode(md5(g::text || 'a') || md5(g::text || 'b') || md5(g::text || 'c') || md5(g::text || 'd')
               || md5(g::text || 'e') || md5(g::text || 'f') || md5(g::text || 'g') || md5(g::text || 'h'), 'hex')
       END
FROM generate_series(1, :rows) g,
     LATERAL (SELECT timestamptz '2019-01-01' + (g::float8 / :rows) * interval '2190 days' + random() * interval '12 hours' AS s) t;

CREATE INDEX trips_rider_id ON trips (rider_id);
CREATE INDEX trips_started_at ON trips (started_at);
CREATE INDEX riders_country ON riders (country);
-- Hint bits set and pages frozen now, so that the first dump does not
-- write the whole table back (it would be slower than the ones after it).
VACUUM (FREEZE, ANALYZE);
CHECKPOINT;
