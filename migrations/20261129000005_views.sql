-- Operator views: what an on-call person reads first.

-- Pending control messages per match, with the age of the oldest (the queue lag).
CREATE VIEW postgame.queue_depth AS
SELECT match_id,
       count(*) AS pending,
       min(created_at) AS oldest,
       now() - min(created_at) AS lag,
       max(attempts) AS max_attempts
FROM postgame.control
GROUP BY match_id;

-- Matches with their queue depth and hold, newest first.
CREATE VIEW postgame.match_overview AS
SELECT m.id, m.game, m.status, m.version, m.next_tick_at, m.created_at, m.updated_at,
       coalesce(q.pending, 0) AS pending_control,
       h.until AS held_until
FROM postgame.matches m
LEFT JOIN postgame.queue_depth q ON q.match_id = m.id
LEFT JOIN postgame.control_holds h ON h.match_id = m.id
ORDER BY m.created_at DESC;
