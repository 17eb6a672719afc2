/** Polls `condition` every `pollMs` until it holds; throws after `timeoutMs`, naming `what`. */
export async function waitUntil(
  condition: () => boolean,
  timeoutMs: number,
  what: string,
  pollMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}
