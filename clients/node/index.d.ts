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
  requestId?: string;
  /** Seconds; overrides the client's default. */
  timeout?: number;
  signal?: AbortSignal;
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
}

export interface Chunk {
  ids: number[];
  text: string;
  offset: number;
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
