"""The peer of `cargo bench --bench fleet`: fleet tracking written the obvious way on the
official OpenAI Python SDK. Arguments: BASE_URL DB_PATH N INTERVAL_SECS CONCURRENCY.

Creates N batches (one 10-request file each), prints {"created": N, "seconds": S}, waits
for a line on stdin, then retrieves every active batch once per interval and writes one
SQLite row per change of status or request counts. Prints {"skip": REASON} and exits 0
when the SDK cannot be imported."""
import asyncio, json, sqlite3, sys, time

try:
    from openai import AsyncOpenAI
except ImportError as e:
    print(json.dumps({"skip": f"import openai failed: {e}"}), flush=True)
    sys.exit(0)

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def requests(k):
    return "".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{k}/{i}"}]},
    }) + "\n" for i in range(10)).encode()


async def main(base_url, db_path, n, interval, concurrency):
    client = AsyncOpenAI(base_url=base_url, api_key="sk-bench-fleet")
    gate = asyncio.Semaphore(concurrency)

    async def create(k):
        async with gate:
            file = await client.files.create(file=(f"f{k}.jsonl", requests(k)), purpose="batch")
            batch = await client.batches.create(input_file_id=file.id, completion_window="24h",
                                                endpoint="/v1/chat/completions")
            return batch.id

    started = time.time()
    active = set(await asyncio.gather(*(create(k) for k in range(n))))
    print(json.dumps({"created": n, "seconds": time.time() - started}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    db = sqlite3.connect(db_path)
    db.execute("create table if not exists changes (batch_id text, observed_ms integer,"
               " status text, total integer, completed integer, failed integer)")
    last = {}

    async def poll(batch_id):
        async with gate:
            batch = await client.batches.retrieve(batch_id)
        counts = batch.request_counts
        seen = (batch.status, *((counts.total, counts.completed, counts.failed) if counts else (0, 0, 0)))
        if last.get(batch_id) != seen:
            last[batch_id] = seen
            db.execute("insert into changes values (?, ?, ?, ?, ?, ?)",
                       (batch_id, int(time.time() * 1000), *seen))
        if batch.status in TERMINAL:
            active.discard(batch_id)

    next_cycle = time.monotonic()
    while True:
        results = await asyncio.gather(*(poll(b) for b in list(active)), return_exceptions=True)
        db.commit()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            print(f"{len(errors)} polls failed, e.g. {errors[0]!r}", file=sys.stderr, flush=True)
        next_cycle += interval
        await asyncio.sleep(max(0.0, next_cycle - time.monotonic()))


if __name__ == "__main__":
    url, path, n, interval, concurrency = sys.argv[1:6]
    asyncio.run(main(url, path, int(n), float(interval), int(concurrency)))
