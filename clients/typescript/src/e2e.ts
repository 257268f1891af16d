/**
 * The proof that `stage:generate --comfyui -c 1 --page 1` works from TypeScript: against a real
 * plasmad (PLASMA_URL) on a real ComfyUI, generate page 1 of chapter 1 from its prompt file, once
 * following the events and once by the long poll alone, and check each image and its entry in
 * the generation log (under PLASMA_PIPELINE_DIR). Then a refusal, as a typed error. Prints one
 * JSON line; exits 1 on any failure. Run by tests/test_ts_client.py (`npm run e2e`).
 */
import { readFile, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

import { generatePage, PlasmaApiError, type GeneratedPage } from "./index.js";

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function fail(message: string): never {
  throw new Error(message);
}

async function checkPage(pipeline: string, page: GeneratedPage, seed: number): Promise<number> {
  const raw = join(pipeline, "output", "ch-01", "raw");
  if (dirname(page.path) !== raw) fail(`${page.path} is not in ${raw}`);
  const match = /^ch01_p001_v(\d+)\.png$/.exec(basename(page.path)) ?? fail(`unexpected name ${page.path}`);
  if (!(await stat(page.path)).isFile()) fail(`${page.path} is not a file`);
  const head = (await readFile(page.path)).subarray(0, 8);
  if (!head.equals(PNG_SIGNATURE)) fail(`${page.path} is not a PNG`);
  const log = JSON.parse(await readFile(join(pipeline, "output", "ch-01", "generation-log.json"), "utf8")) as Array<
    Record<string, unknown>
  >;
  const entry = log.find((e) => e.jobId === page.job.id) ?? fail(`no log entry for job ${page.job.id}`);
  if (entry.imageFile !== basename(page.path)) fail(`log entry names ${String(entry.imageFile)}`);
  if (entry.seed !== seed || entry.generationBackend !== "comfyui") fail(`log entry ${JSON.stringify(entry)}`);
  if (entry.promptFile !== "prompts/ch-01/p001.txt") fail(`log entry's prompt file: ${String(entry.promptFile)}`);
  return Number(match[1]);
}

async function main(): Promise<void> {
  const baseUrl = process.env.PLASMA_URL ?? fail("PLASMA_URL is not set");
  const pipeline = process.env.PLASMA_PIPELINE_DIR ?? fail("PLASMA_PIPELINE_DIR is not set");
  const size = { width: 64, height: 64 };
  let steps = 0;
  const followed = await generatePage({
    baseUrl,
    chapter: 1,
    page: 1,
    seed: 11,
    steps: 2,
    resolution: size,
    onProgress: () => void steps++,
  });
  const polled = await generatePage({ baseUrl, chapter: 1, page: 1, seed: 12, steps: 2, resolution: size, useEvents: false });
  const first = await checkPage(pipeline, followed, 11);
  const second = await checkPage(pipeline, polled, 12);
  if (second !== first + 1) fail(`versions ${first}, ${second}: a new image is a new version`);
  if (steps === 0) fail("no progress was seen on the event stream");

  let refusal: PlasmaApiError | null = null;
  try {
    await generatePage({ baseUrl, chapter: 1, page: 1, resolution: { width: 1024, height: 768 } });
  } catch (err) {
    if (!(err instanceof PlasmaApiError)) throw err;
    refusal = err;
  }
  if (refusal === null || refusal.status !== 400 || refusal.code !== 1001 || refusal.field !== "resolution.width") {
    fail(`a 1024 px page was not refused as it should be: ${String(refusal)}`);
  }
  console.log(
    JSON.stringify({ ok: true, images: [followed.path, polled.path], versions: [first, second], progressEvents: steps, refusal: refusal.errorName }),
  );
}

main().catch((err: unknown) => {
  console.error(`e2e: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
