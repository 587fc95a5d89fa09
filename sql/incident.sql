-- incident.sql: per-route error rates and per-template error counts over 10-second windows.
--
-- What it computes, for every 10 s tumbling window of event time:
--   route_window_stats:   per route, the errors the enforcer reported (error_events, each
--                         weighted by 1 / sample_rate), the
--                         requests it served (sum of route_counts.requests), the error rate
--                         errors / requests, and `incident`: the rate and volume trigger
--                         (error rate >= 20 % and >= 50 errors in the window, the plan's rule).
--   route_template_errors: per (route, template_id), the error count, for templates seen at
--                         least 5 times in the window (smaller groups are noise).
--
-- Edit the thresholds below and restart the job to change what counts as an incident.
-- Dialect: Arroyo (sources / sinks as CREATE TABLE ... WITH (connector = ...), windows as
-- TUMBLE(INTERVAL ...) in GROUP BY, event time from the WATERMARK). The embedded engine runs
-- it on DataFusion; the connector options are what an Arroyo cluster would use.

CREATE TABLE error_events (
    ts TIMESTAMP NOT NULL,
    route TEXT NOT NULL,
    method TEXT NOT NULL,
    upstream TEXT NOT NULL,
    status INT NOT NULL,
    message TEXT NOT NULL,
    template_id BIGINT UNSIGNED NOT NULL,
    dimensions TEXT NOT NULL,
    sample_rate DOUBLE NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (
    connector = 'kafka',
    type = 'source',
    format = 'json',
    topic = 'gateway.error_events',
    bootstrap_servers = 'localhost:9092',
    event_time_field = 'ts'
);

CREATE TABLE route_counts (
    ts TIMESTAMP NOT NULL,
    route TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (
    connector = 'kafka',
    type = 'source',
    format = 'json',
    topic = 'gateway.route_counts',
    bootstrap_servers = 'localhost:9092',
    event_time_field = 'ts'
);

CREATE TABLE route_window_stats WITH (
    connector = 'kafka',
    type = 'sink',
    format = 'json',
    topic = 'gateway.route_window_stats',
    bootstrap_servers = 'localhost:9092'
);

CREATE TABLE route_template_errors WITH (
    connector = 'kafka',
    type = 'sink',
    format = 'json',
    topic = 'gateway.route_template_errors',
    bootstrap_servers = 'localhost:9092'
);

INSERT INTO route_window_stats
SELECT
    c.window,
    c.route,
    COALESCE(e.errors, 0) AS errors,
    c.requests,
    CASE WHEN c.requests > 0
         THEN CAST(COALESCE(e.errors, 0) AS DOUBLE) / CAST(c.requests AS DOUBLE)
         ELSE 0.0 END AS error_rate,
    c.requests > 0
        AND CAST(COALESCE(e.errors, 0) AS DOUBLE) / CAST(c.requests AS DOUBLE) >= 0.2
        AND COALESCE(e.errors, 0) >= 50 AS incident
FROM (
    SELECT TUMBLE(INTERVAL '10 seconds') AS window, route, SUM(requests) AS requests
    FROM route_counts
    GROUP BY window, route
) c
LEFT JOIN (
    -- Each event stands for 1 / sample_rate errors (the enforcer may sample them).
    SELECT TUMBLE(INTERVAL '10 seconds') AS window, route,
           CAST(ROUND(SUM(1.0 / sample_rate)) AS BIGINT) AS errors
    FROM error_events
    GROUP BY window, route
) e
ON c.window = e.window AND c.route = e.route;

INSERT INTO route_template_errors
SELECT
    TUMBLE(INTERVAL '10 seconds') AS window,
    route,
    template_id,
    COUNT(*) AS errors
FROM error_events
GROUP BY window, route, template_id
HAVING COUNT(*) >= 5;
