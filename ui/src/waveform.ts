// Audio waveforms (PS3.3 C.10.9, Waveform module) decoded to 16-bit PCM and wrapped as a WAV file,
// which an <audio> element plays from a blob: URL. Samples are interleaved by channel (C.10.9.1.5);
// WaveformSampleInterpretation: SB/UB signed/unsigned 8 bit, SS/US 16 bit (little endian, as the
// archive serves bulk data), MB µ-law and AB A-law (ITU-T G.711).

export interface Waveform {
  channels: number;
  samples: number; // per channel
  frequency: number; // Hz
  interpretation: string;
}

/** G.711 µ-law to 16-bit linear (g711.c ulaw2linear). */
export function muLaw(byte: number): number {
  const u = ~byte & 0xff;
  const exponent = (u >> 4) & 0x07;
  const magnitude = (((u & 0x0f) << 3) + 0x84) << exponent;
  return (u & 0x80) ? 0x84 - magnitude : magnitude - 0x84;
}

/** G.711 A-law to 16-bit linear (g711.c alaw2linear). */
export function aLaw(byte: number): number {
  const a = byte ^ 0x55;
  const segment = (a & 0x70) >> 4;
  let t = (a & 0x0f) << 4;
  if (segment === 0) t += 8;
  else if (segment === 1) t += 0x108;
  else t = (t + 0x108) << (segment - 1);
  return (a & 0x80) ? t : -t;
}

const BYTES: Record<string, number> = { SB: 1, UB: 1, MB: 1, AB: 1, SS: 2, US: 2 };

export class WaveformError extends Error {}

/** The interleaved samples as signed 16-bit PCM. */
export function pcm16(data: Uint8Array, wave: Waveform): Int16Array {
  const size = BYTES[wave.interpretation];
  if (!size) throw new WaveformError(`waveform sample interpretation ${wave.interpretation || "(none)"} is not audio`);
  const count = Math.min(wave.channels * wave.samples, Math.floor(data.length / size));
  const out = new Int16Array(count);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  for (let i = 0; i < count; i++) {
    switch (wave.interpretation) {
      case "SB": out[i] = view.getInt8(i) * 256; break;
      case "UB": out[i] = (data[i] - 128) * 256; break;
      case "SS": out[i] = view.getInt16(i * 2, true); break;
      case "US": out[i] = view.getUint16(i * 2, true) - 32768; break;
      case "MB": out[i] = muLaw(data[i]); break;
      case "AB": out[i] = aLaw(data[i]); break;
    }
  }
  return out;
}

/** A RIFF WAVE file (PCM, 16 bit) holding the samples. */
export function wav(samples: Int16Array, channels: number, frequency: number): Blob {
  const header = new DataView(new ArrayBuffer(44));
  const ascii = (at: number, text: string) => [...text].forEach((c, i) => header.setUint8(at + i, c.charCodeAt(0)));
  const bytes = samples.length * 2;
  ascii(0, "RIFF");
  header.setUint32(4, 36 + bytes, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, channels, true);
  header.setUint32(24, Math.round(frequency), true);
  header.setUint32(28, Math.round(frequency) * channels * 2, true);
  header.setUint16(32, channels * 2, true);
  header.setUint16(34, 16, true);
  ascii(36, "data");
  header.setUint32(40, bytes, true);
  // WAV is little endian like the Int16Array on every browser's platform
  return new Blob([header.buffer, samples.buffer as ArrayBuffer], { type: "audio/wav" });
}
