-- Demo data for docker/compose.yml. The postgres image runs this once, when
-- its data volume is empty, as the superuser in the database `trips`
-- (POSTGRES_DB). Start over with `docker compose down -v`.

-- The role refugio backs up with: read everything, nothing else
-- (PostgreSQL 14+). Its password is PGPASSWORD of the refugio service.
CREATE ROLE refugio LOGIN PASSWORD 'refugio-demo-password';
GRANT pg_read_all_data TO refugio;

CREATE TABLE trips (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz   NOT NULL,
    ended_at    timestamptz   NOT NULL,
    city        text          NOT NULL,
    distance_km numeric(7, 2) NOT NULL CHECK (distance_km >= 0),
    fare_eur    numeric(8, 2) NOT NULL CHECK (fare_eur >= 0)
);

INSERT INTO trips (started_at, ended_at, city, distance_km, fare_eur)
SELECT start,
       start + make_interval(mins => 5 + (g % 55)),
       (ARRAY['Madrid', 'Barcelona', 'Valencia', 'Sevilla', 'Bilbao'])[1 + g % 5],
       round((1 + (g * 37) % 400 / 10.0)::numeric, 2),
       round((3 + (g * 37) % 400 / 10.0 * 1.15)::numeric, 2)
FROM generate_series(1, 10000) AS g,
     LATERAL (SELECT timestamptz '2026-01-01 00:00:00+00' + make_interval(mins => g * 7) AS start) AS s;

CREATE INDEX trips_city_started_at ON trips (city, started_at);
ANALYZE trips;
