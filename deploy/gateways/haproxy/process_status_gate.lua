-- HAProxy (2.6+) action that asks process-status /gate whether the
-- read-your-writes token(s) of a request have been processed.
--
-- HAProxy has no forward-auth directive; this action makes the check with the
-- built-in core.httpclient() and leaves the answer in transaction variables
-- for haproxy.cfg to act on with `http-request return`:
--
--   txn.gate_status       HTTP status of the gate (200 allows), or 0 when
--                         the gate could not be reached / did not answer
--   txn.gate_retry_after  the gate's Retry-After header (may be empty)
--   txn.gate_body         the gate's problem+json body (may be empty)
--   txn.gate_max_age      seconds the gate's 200 may be reused (its
--                         Cache-Control max-age, less any Age); set only for
--                         a 200 that may be reused, so haproxy.cfg keeps
--                         nothing else in its stick table
--
-- Usage in haproxy.cfg:
--   global
--       lua-load process_status_gate.lua
--   frontend ...
--       http-request lua.process_status_gate "http://127.0.0.1:8000/gate"

-- Client headers sent to the gate (everything else stays with the request).
local FORWARDED_HEADERS = {
    "x-event-streamex-entity-timestamp",
    -- read token, when process-status runs with read tokens; set it with
    -- `http-request set-header X-Process-Status-Token ...` before the action
    "x-process-status-token",
}

-- How long to wait for the gate, in ms. Must exceed the service's
-- --gate-wait (default 0.1 s).
local GATE_TIMEOUT_MS = 2000

-- The longest reuse of a 200 handed to haproxy.cfg, in seconds.
local MAX_AGE_SECONDS = 86400

-- The max-age of a Cache-Control value, nil when it allows no reuse.
local function max_age_of(control)
    if control == nil or string.find(control, "no-store", 1, true) then
        return nil
    end
    local seconds = string.match(control, "max%-age=(%d+)")
    if seconds == nil then
        return nil
    end
    return tonumber(seconds)
end

-- HAProxy header tables are indexed from 0; accept 1-based ones too.
local function values_of(t)
    local list = {}
    if t == nil then
        return list
    end
    local i = 0
    if t[0] == nil then
        i = 1
    end
    while t[i] ~= nil do
        list[#list + 1] = t[i]
        i = i + 1
    end
    return list
end

core.register_action("process_status_gate", { "http-req" }, function(txn, gate_url, gate_dst)
    local request_headers = txn.http:req_get_headers()
    local headers = {
        ["x-forwarded-method"] = { txn.f:method() },
        ["x-forwarded-uri"] = { txn.f:url() },
    }
    for _, name in ipairs(FORWARDED_HEADERS) do
        local values = values_of(request_headers[name])
        if #values > 0 then
            headers[name] = values
        end
    end

    local ok, response = pcall(function()
        return core.httpclient():get({
            url = gate_url,
            dst = gate_dst,
            headers = headers,
            timeout = GATE_TIMEOUT_MS,
        })
    end)

    local status = 0
    local retry_after = ""
    local body = ""
    if ok and response ~= nil and response.status ~= nil and response.status > 0 then
        local response_headers = response.headers or {}
        local content_type = values_of(response_headers["content-type"])[1] or ""
        -- When the gate cannot be reached the httpclient answers with
        -- HAProxy's own 503 HTML page; the gate's denials are always
        -- problem+json. Keep status 0 ("no answer") for the former.
        if response.status == 200 or string.find(content_type, "json", 1, true) then
            status = response.status
            body = response.body or ""
            retry_after = values_of(response_headers["retry-after"])[1] or ""
        end
        local max_age = max_age_of(values_of(response_headers["cache-control"])[1])
        if status == 200 and max_age ~= nil then
            -- A cache between here and the gate would say how old its copy is.
            max_age = max_age - (tonumber(values_of(response_headers["age"])[1] or "0") or 0)
            if max_age > 0 then
                -- The config adds this to the time of day in a 32-bit counter:
                -- keep the sum far from overflowing (the table's expire is
                -- shorter anyway).
                txn:set_var("txn.gate_max_age", math.min(max_age, MAX_AGE_SECONDS))
            end
        end
    end
    txn:set_var("txn.gate_status", status)
    txn:set_var("txn.gate_retry_after", retry_after)
    txn:set_var("txn.gate_body", body)
end, 2)
