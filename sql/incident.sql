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
--   cluster_decisions:    per failure cluster, every second over the last 10 s: errors, growth,
--                         the learned slice and its estimated traffic, the in-slice error rate,
--                         severity and the decision (none / circuit_break / rate_limit /
--                         degrade) with its parameters. The job turns decisions into policies.
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
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
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
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (
    connector = 'kafka',
    type = 'source',
    format = 'json',
    topic = 'gateway.route_counts',
    bootstrap_servers = 'localhost:9092',
    event_time_field = 'ts'
);

CREATE TABLE traffic_samples (
    ts TIMESTAMP NOT NULL,
    route TEXT NOT NULL,
    method TEXT NOT NULL,
    upstream TEXT NOT NULL,
    status INT NOT NULL,
    is_error BOOLEAN NOT NULL,
    rejected BOOLEAN NOT NULL,
    dimensions TEXT NOT NULL,
    sample_rate DOUBLE NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (
    connector = 'kafka',
    type = 'source',
    format = 'json',
    topic = 'gateway.traffic_samples',
    bootstrap_servers = 'localhost:9092',
    event_time_field = 'ts'
);

CREATE TABLE cluster_decisions WITH (
    connector = 'kafka',
    type = 'sink',
    format = 'json',
    topic = 'gateway.cluster_decisions',
    bootstrap_servers = 'localhost:9092'
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

-- What to do about each failure cluster. A 20 s window sliding by 1 s: every second, the last
-- 10 s ("current") against the 10 s before. The learned slice comes from the cluster's current
-- errors against the current sample of admitted traffic and per-route admitted request counts
-- (`learn_slice`, a UDF over `array_agg` lists; requests the gateway itself rejected are left
-- out, so an active policy is judged by what still reaches the upstream). The thresholds and
-- actions in the outer SELECT are the plan's: edit them here.
INSERT INTO cluster_decisions
SELECT
    window,
    cluster_id,
    errors,
    previous_errors,
    growth,
    signature,
    templates,
    slice,
    slice_traffic,
    slice_samples,
    coverage,
    slice_error_rate,
    severity,
    CASE
        -- The trigger: at least 50 errors in 10 s (smaller clusters are too small to judge)
        -- and at least 20 % errors inside the learned slice.
        WHEN errors < 50 OR slice_error_rate < 0.2 THEN 'none'
        WHEN severity >= 0.8 THEN 'circuit_break'
        WHEN severity >= 0.4 THEN 'rate_limit'
        ELSE 'degrade'
    END AS decision,
    -- Keeps a policy in force: while it acts, only its probes and admitted share reach the
    -- upstream, so a handful of errors at a high in-slice rate means still failing.
    errors >= 5 AND slice_error_rate >= 0.2 AS holding,
    -- rate_limit: shed severity x 0.8 of the slice's traffic (never more than 80 %).
    GREATEST(slice_traffic / 10.0 * (1.0 - 0.8 * severity), 1.0) AS rate_limit_rps,
    -- circuit_break: open this long, then half-open probes re-admit the slice in 20 % steps
    -- of 3 probes each (2 failures re-open it). A short open period lets a healed slice back
    -- in quickly; probes still in flight hold the ramp, so a slow failure cannot sneak back.
    1000 AS break_open_ms,
    0.2 AS break_ramp_step,
    3 AS break_probes,
    -- Every policy lapses after 5 minutes unless a later window renews it.
    300000 AS expires_in_ms
FROM (
    SELECT
        *,
        -- Severity: the in-slice error rate, weighted up to 1.0 while errors still grow
        -- (x0.9 when steady, x1.0 at double the previous window or more).
        LEAST(1.0, slice_error_rate * (0.8 + 0.1 * LEAST(growth, 2.0))) AS severity
    FROM (
        -- One failure's messages can vary more than the clustering threshold allows and land
        -- in several clusters; clusters that learned the same slice are judged together, as
        -- one failure of that slice: errors and in-slice error rates add up, signatures
        -- join, and the cluster with the most errors names the group (and its policy).
        SELECT
            window,
            array_element(array_agg(cluster_id ORDER BY errors DESC, cluster_id), 1)
                AS cluster_id,
            SUM(errors) AS errors,
            SUM(previous_errors) AS previous_errors,
            CAST(SUM(errors) AS DOUBLE) / CAST(GREATEST(SUM(previous_errors), 1) AS DOUBLE)
                AS growth,
            array_distinct(flatten(array_agg(signature))) AS signature,
            array_distinct(flatten(array_agg(templates))) AS templates,
            MAX(slice) AS slice,
            MAX(slice_traffic) AS slice_traffic,
            MAX(slice_samples) AS slice_samples,
            SUM(coverage * CAST(errors AS DOUBLE)) / CAST(GREATEST(SUM(errors), 1) AS DOUBLE)
                AS coverage,
            LEAST(1.0, SUM(slice_error_rate)) AS slice_error_rate
        FROM (
            SELECT
                e.window,
                e.cluster_id,
                e.errors,
                e.previous_errors,
                e.signature,
                e.templates,
                get_field(e.learned, 'slice') AS slice,
                get_field(e.learned, 'traffic') AS slice_traffic,
                get_field(e.learned, 'samples') AS slice_samples,
                get_field(e.learned, 'coverage') AS coverage,
                -- Errors per request in the slice since the cluster appeared: a failure that
                -- started 2 s ago is judged on those 2 s, not diluted over the whole 10 s.
                LEAST(1.0, get_field(e.learned, 'error_rate') / e.active_share) AS slice_error_rate
            FROM (
                SELECT
                    e.window,
                    e.cluster_id,
                    e.errors,
                    e.previous_errors,
                    e.signature,
                    e.templates,
                    -- Share of the 10 s since the cluster's first error (at least 1 s).
                    LEAST(1.0, GREATEST(1000.0, CAST(e.window_end_ms - e.first_error_ms AS DOUBLE))
                        / 10000.0) AS active_share,
                    learn_slice(e.rows, t.rows, c.rows) AS learned
                FROM (
                    SELECT
                        window,
                        cluster_id,
                        CAST(ROUND(SUM(CASE WHEN current THEN w ELSE 0.0 END)) AS BIGINT) AS errors,
                        CAST(ROUND(SUM(CASE WHEN current THEN 0.0 ELSE w END)) AS BIGINT)
                            AS previous_errors,
                        array_agg(DISTINCT template_id) FILTER (WHERE current) AS signature,
                        array_agg(DISTINCT template_text) FILTER (WHERE current) AS templates,
                        array_agg(row) FILTER (WHERE current) AS rows,
                        MIN(ts_ms) FILTER (WHERE current) AS first_error_ms,
                        MAX(window_end_ms) AS window_end_ms
                    FROM (
                        SELECT
                            HOP(INTERVAL '1 second', INTERVAL '20 seconds') AS window,
                            cluster_of(message) AS cluster_id,
                            template_id,
                            template(message) AS template_text,
                            request_row(route, method, upstream, dimensions, sample_rate) AS row,
                            ts >= get_field(HOP(INTERVAL '1 second', INTERVAL '20 seconds'), 'end')
                                - INTERVAL '10 seconds' AS current,
                            CAST(ts AS BIGINT) AS ts_ms,
                            CAST(get_field(HOP(INTERVAL '1 second', INTERVAL '20 seconds'), 'end')
                                AS BIGINT) AS window_end_ms,
                            1.0 / sample_rate AS w
                        FROM error_events
                    ) x
                    GROUP BY window, cluster_id
                ) e
                LEFT JOIN (
                    SELECT
                        HOP(INTERVAL '1 second', INTERVAL '20 seconds') AS window,
                        array_agg(request_row(route, method, upstream, dimensions, sample_rate))
                            AS rows
                    FROM traffic_samples
                    WHERE NOT rejected AND ts >= get_field(HOP(INTERVAL '1 second', INTERVAL '20 seconds'), 'end')
                        - INTERVAL '10 seconds'
                    GROUP BY window
                ) t ON e.window = t.window
                LEFT JOIN (
                    SELECT
                        HOP(INTERVAL '1 second', INTERVAL '20 seconds') AS window,
                        array_agg(concat(route, '=', CAST(requests - rejected AS TEXT))) AS rows
                    FROM route_counts
                    WHERE ts >= get_field(HOP(INTERVAL '1 second', INTERVAL '20 seconds'), 'end')
                        - INTERVAL '10 seconds'
                    GROUP BY window
                ) c ON e.window = c.window
            ) e
        ) k
        -- A cluster without a learnable slice stays on its own.
        GROUP BY window, COALESCE(slice, cluster_id)
    ) s
) d
WHERE errors > 0;
