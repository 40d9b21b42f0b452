// Type declarations of @dmoe/client (index.js).
export type ChatMessage = { role: string; content: string };

export interface GenerateOptions {
  prompt?: string;
  chat?: string | ChatMessage[];
  promptIds?: number[];
  model?: string;
  maxNewTokens?: number;
  threshold?: number;
  blockLength?: number;
  steps?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  stopIds?: number[];
  /**
   * Stop strings (one, or up to 16 of 1 to 256 bytes), applied by the server to the decoded
   * text: the output ends right before the first match (not returned), finishReason 'stop',
   * `matchedStop` names it. Needs a server with a tokenizer.
   */
  stop?: string | string[];
  /** Return the log-probability of every generated token (Result.logprobs, Chunk.logprobs). */
  logprobs?: boolean;
  /** LLaDA2.1 token editing preset; `editThreshold` and `maxPostSteps` override it. */
  editing?: 'off' | 'speed' | 'quality';
  /** Rewrite a decoded token whose argmax differs with confidence above this, in [0, 1]; turns editing on. */
  editThreshold?: number;
  /** With editing: edit-only forwards per block after its masks are filled, in [0, 4096]. */
  maxPostSteps?: number;
  requestId?: string;
  /** Seconds; overrides the client's default. */
  timeout?: number;
  signal?: AbortSignal;
}

/** One generated token and its log-probability when it was committed. */
export interface TokenLogprob {
  id: number;
  /** <= 0. */
  logprob: number;
  /** The token's raw bytes (possibly part of a UTF-8 character); empty for special tokens. */
  token: Buffer;
}

export interface Result {
  ids: number[];
  text: string;
  forwards: number;
  tokensPerForward: number;
  finishReason: 'stop' | 'length';
  promptTokens: number;
  requestId: string;
  seconds: number;
  /** With `logprobs: true`: one entry per id of `ids`; else empty. */
  logprobs: TokenLogprob[];
  /** The stop string that ended the output (finishReason 'stop'); '' otherwise. */
  matchedStop: string;
  /** Token editing: tokens the model rewrote (re-masks included); 0 without editing. */
  edits: number;
  /** Of `edits`, how many went back to the mask. */
  remasks: number;
}

export interface Chunk {
  ids: number[];
  text: string;
  offset: number;
  /** With `logprobs: true`: one entry per id of `ids`. */
  logprobs: TokenLogprob[];
  /** On the last chunk only. */
  final?: Result;
}

export interface ModelInfo {
  name: string;
  version: string;
  vocabSize: number;
  maxPositionEmbeddings: number;
  blockLength: number;
  maskId: number;
  stopIds: number[];
}

export class DmoeError extends Error {
  code: number;
  codeName: string;
  details: string;
}

export class Client {
  constructor(target: string, options?: { apiKey?: string; tlsCa?: string | Buffer; timeout?: number });
  generate(options: GenerateOptions): Promise<Result>;
  stream(options: GenerateOptions): AsyncIterable<Chunk>;
  models(options?: { timeout?: number }): Promise<ModelInfo[]>;
  tokenize(options: { text?: string; chat?: string | ChatMessage[]; timeout?: number }): Promise<number[]>;
  close(): void;
}

export const status: { [name: string]: number };
