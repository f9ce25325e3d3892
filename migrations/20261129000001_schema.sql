-- postgame keeps every object in its own schema so it can live beside an application's
-- tables in an existing database.
CREATE SCHEMA IF NOT EXISTS postgame;
