-- wrk script for credbroker's hot-path benchmark (bench/run.sh, benches/load).
-- Sends the ID token in $CB_TOKEN as the Authorization header, exactly as AWS SDKs send the
-- contents of AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, and prints one machine-readable line:
--   CBRESULT requests=N duration_us=N p50_us=N p99_us=N non2xx=N errors=N
local token = os.getenv("CB_TOKEN") or ""

wrk.method = "GET"
wrk.headers["Authorization"] = token
wrk.headers["Accept"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "CBRESULT requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d errors=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
