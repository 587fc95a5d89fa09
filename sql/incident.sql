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
--   cluster_window_stats: per (route, failure cluster), the weighted errors of this 10 s
--                         window and of the one before it, and growth = errors / max(previous,
--                         1). `cluster_of` (a UDF from udfs/) masks, templates, embeds new
--                         templates and assigns the nearest cluster.
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

CREATE TABLE cluster_window_stats WITH (
    connector = 'kafka',
    type = 'sink',
    format = 'json',
    topic = 'gateway.cluster_window_stats',
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

-- A 20 s window sliding by 10 s holds this window and the previous one: its rows split at
-- `window.end - 10 s` into the current and the previous half.
INSERT INTO cluster_window_stats
SELECT
    window,
    route,
    cluster_id,
    errors,
    previous_errors,
    CAST(errors AS DOUBLE) / CAST(GREATEST(previous_errors, 1) AS DOUBLE) AS growth
FROM (
    SELECT
        window,
        route,
        cluster_id,
        CAST(ROUND(SUM(CASE WHEN current THEN w ELSE 0.0 END)) AS BIGINT) AS errors,
        CAST(ROUND(SUM(CASE WHEN current THEN 0.0 ELSE w END)) AS BIGINT) AS previous_errors
    FROM (
        SELECT
            HOP(INTERVAL '10 seconds', INTERVAL '20 seconds') AS window,
            route,
            cluster_of(message) AS cluster_id,
            ts >= get_field(HOP(INTERVAL '10 seconds', INTERVAL '20 seconds'), 'end')
                - INTERVAL '10 seconds' AS current,
            1.0 / sample_rate AS w
        FROM error_events
    ) e
    GROUP BY window, route, cluster_id
) g;
