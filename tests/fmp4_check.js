#!/usr/bin/env node
// fMP4/CMAF structure summary made by mp4box.js (GPAC's MP4 parser in JavaScript), a reader we
// did not write: `node tests/fmp4_check.js INIT SEGMENT...` prints one JSON object with what
// mp4box.js parsed out of the init segment (ftyp brands, moov/mvhd, trak codec strings and
// timescales, mvex/trex) and out of each media segment on its own (styp brands, top-level boxes,
// mfhd sequence number, per traf: tfhd, tfdt baseMediaDecodeTime, trun sample counts, summed
// durations and sizes, the byte range the data offsets point at and whether it lies inside the
// segment's mdat payload), plus the sample count per track mp4box.js builds from the init segment
// and all segments read as one file. It judges nothing: tests/hls_fmp4.rs asserts on it.
//
// mp4box.js comes from `MP4BOX_JS` (a path to dist/mp4box.all.cjs) or target/test-assets/mp4box
// (`bash .ci/deps` puts it there). Exit status 2 when a file cannot be read or parsed at all.
'use strict';

const fs = require('fs');
const path = require('path');

const lib =
  process.env.MP4BOX_JS ||
  path.join(__dirname, '..', 'target', 'test-assets', 'mp4box', 'dist', 'mp4box.all.cjs');

// mp4box.js logs through console.*: keep stdout for the JSON.
const problems = [];
for (const level of ['log', 'info', 'debug', 'warn']) {
  console[level] = (...args) => process.stderr.write(args.join(' ') + '\n');
}
console.error = (...args) => {
  problems.push(args.join(' '));
  process.stderr.write(args.join(' ') + '\n');
};

const MP4Box = require(lib);
MP4Box.Log.setLogLevel(MP4Box.Log.error);

function parse(buffers) {
  const file = MP4Box.createFile(false);
  let at = 0;
  for (const data of buffers) {
    const ab = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
    ab.fileStart = at;
    at += ab.byteLength;
    file.appendBuffer(ab);
  }
  file.flush();
  return file;
}

function brands(box) {
  return box
    ? { major: box.major_brand, minor: box.minor_version, compatible: box.compatible_brands }
    : null;
}

function init(name) {
  const data = fs.readFileSync(name);
  const file = parse([data]);
  const info = file.getInfo();
  const moov = file.moov;
  const mvex = moov && moov.mvex;
  return {
    file: name,
    boxes: file.boxes.map((b) => b.type),
    ftyp: brands(file.ftyp),
    moov: moov
      ? {
          mvhd_timescale: moov.mvhd.timescale,
          mvex: !!mvex,
          trex: mvex
            ? (mvex.trexs || []).map((t) => ({
                track_id: t.track_id,
                default_sample_description_index: t.default_sample_description_index,
                default_sample_duration: t.default_sample_duration,
                default_sample_size: t.default_sample_size,
                default_sample_flags: t.default_sample_flags,
              }))
            : [],
          tracks: moov.traks.map((trak) => {
            const entry = trak.mdia.minf.stbl.stsd.entries[0];
            return {
              id: trak.tkhd.track_id,
              handler: trak.mdia.hdlr.handler,
              sample_entry: entry.type,
              codec: entry.getCodec(),
              timescale: trak.mdia.mdhd.timescale,
              // Samples in the moov's own tables: none in an fMP4 init segment.
              stbl_samples: trak.samples ? trak.samples.length : 0,
            };
          }),
        }
      : null,
    fragmented: !!info.isFragmented,
    mime: info.mime,
  };
}

function segment(name, trex) {
  const data = fs.readFileSync(name);
  const file = parse([data]);
  const boxes = file.boxes.map((b) => ({ type: b.type, start: b.start, size: b.size }));
  const mdats = file.boxes
    .filter((b) => b.type === 'mdat')
    .map((b) => ({ start: b.start + b.hdr_size, end: b.start + b.size }));
  const moofs = file.moofs.map((moof) => {
    let next = moof.start; // where a traf's data starts without an explicit base
    const trafs = (moof.trafs || []).map((traf) => {
      const tfhd = traf.tfhd;
      const defaults = trex.find((t) => t.track_id === tfhd.track_id) || {};
      let base;
      if (tfhd.flags & 0x1) base = tfhd.base_data_offset;
      else if (tfhd.flags & 0x20000) base = moof.start;
      else base = next;
      const runs = (traf.truns || []).map((trun) => {
        const n = trun.sample_count;
        let duration = 0;
        let bytes = 0;
        for (let i = 0; i < n; i++) {
          duration +=
            trun.flags & 0x100
              ? trun.sample_duration[i]
              : tfhd.flags & 0x8
                ? tfhd.default_sample_duration
                : defaults.default_sample_duration || 0;
          bytes +=
            trun.flags & 0x200
              ? trun.sample_size[i]
              : tfhd.flags & 0x10
                ? tfhd.default_sample_size
                : defaults.default_sample_size || 0;
        }
        const start = trun.flags & 0x1 ? base + trun.data_offset : next;
        next = start + bytes;
        return {
          samples: n,
          duration,
          bytes,
          data_offset: trun.flags & 0x1 ? trun.data_offset : null,
          data_start: start,
          data_end: start + bytes,
          inside_mdat: mdats.some((m) => start >= m.start && start + bytes <= m.end),
        };
      });
      return {
        track_id: tfhd.track_id,
        default_base_is_moof: !!(tfhd.flags & 0x20000),
        base_media_decode_time: traf.tfdt ? Number(traf.tfdt.baseMediaDecodeTime) : null,
        tfdt_version: traf.tfdt ? traf.tfdt.version : null,
        truns: runs,
        samples: runs.reduce((a, r) => a + r.samples, 0),
        duration: runs.reduce((a, r) => a + r.duration, 0),
        inside_mdat: runs.every((r) => r.inside_mdat),
      };
    });
    return {
      start: moof.start,
      size: moof.size,
      sequence_number: moof.mfhd ? moof.mfhd.sequence_number : null,
      trafs,
    };
  });
  return {
    file: name,
    size: data.byteLength,
    boxes,
    styp: brands(file.styp),
    mdats,
    moofs,
  };
}

function main() {
  const args = process.argv.slice(2);
  if (args.length < 1) {
    process.stderr.write('usage: fmp4_check.js INIT [SEGMENT...]\n');
    process.exit(2);
  }
  const summary = { mp4box: require(path.join(path.dirname(lib), '..', 'package.json')).version };
  try {
    summary.init = init(args[0]);
    const trex = summary.init.moov ? summary.init.moov.trex : [];
    summary.segments = args.slice(1).map((s) => segment(s, trex));
    // Everything as one file: the sample tables mp4box.js builds from the fragments.
    const all = parse(args.map((f) => fs.readFileSync(f)));
    summary.combined = (all.moov ? all.moov.traks : []).map((trak) => ({
      id: trak.tkhd.track_id,
      samples: trak.samples ? trak.samples.length : 0,
      duration: trak.samples_duration || 0,
    }));
  } catch (e) {
    summary.exception = String(e && e.stack ? e.stack : e);
  }
  summary.problems = problems;
  process.stdout.write(JSON.stringify(summary, null, 1) + '\n');
  process.exit(summary.exception ? 2 : 0);
}

main();
