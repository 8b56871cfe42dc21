-- wrk script for bench/load.sh: every request uploads one small image no one has sent before
-- (a 96×96 BMP with noise pixels and a per-request seed), so each is decoded and embedded, not
-- answered from the cache. Counts the statuses it gets and prints them as JSON at the end.

local boundary = "kadr-load-8f2a"
local side = 96

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  statuses = {}
  math.randomseed(os.time() * 1000 + id)
end

local function le32(n)
  return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 16777216) % 256)
end

local function le16(n)
  return string.char(n % 256, math.floor(n / 256) % 256)
end

local function bmp()
  local row = side * 3
  local size = row * side
  local header = "BM" .. le32(54 + size) .. le32(0) .. le32(54) .. le32(40) .. le32(side)
    .. le32(side) .. le16(1) .. le16(24) .. le32(0) .. le32(size) .. le32(2835) .. le32(2835)
    .. le32(0) .. le32(0)
  local rows = {}
  local base = math.random(0, 255)
  for y = 1, side do
    local px = {}
    for x = 1, side do
      local v = (base + x * 3 + y * 5 + math.random(0, 40)) % 256
      px[x] = string.char(v, (v * 7) % 256, (255 - v))
    end
    rows[y] = table.concat(px)
  end
  return header .. table.concat(rows)
end

function request()
  counter = counter + 1
  local name = string.format("load-%d-%d.bmp", id, counter)
  local body = "--" .. boundary .. "\r\n"
    .. "Content-Disposition: form-data; name=\"files\"; filename=\"" .. name .. "\"\r\n"
    .. "Content-Type: image/bmp\r\n\r\n" .. bmp() .. "\r\n--" .. boundary .. "--\r\n"
  return wrk.format("POST", "/api/v1/analyse",
    { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s) do
      total[code] = (total[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(total) do
    table.insert(parts, string.format("\"%d\": %d", code, n))
  end
  io.write(string.format(
    "RESULT {\"requests\": %d, \"seconds\": %.1f, \"per_second\": %.1f, "
      .. "\"p50_ms\": %.1f, \"p90_ms\": %.1f, \"p99_ms\": %.1f, \"max_ms\": %.1f, "
      .. "\"socket_errors\": %d, \"timeouts\": %d, \"statuses\": {%s}}\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write,
    summary.errors.timeout, table.concat(parts, ", ")))
end
