// Cache compatibility: the fingerprints of the pipelines shipped at commit 89eb3d0 (kept as fixtures:
// the flagship has since moved to one base pass) and of every stage kind with its defaults are the
// ones computed at that commit, before the stage params moved to one JSON-schema source, except
// where a kind's `version` was bumped on purpose since (`bumps` below: the reason, and the
// fingerprints of the bumped stages and their dependents after it). Any other change means a cache
// written before no longer hits by accident.
// Input hashes and the runtime are fixed so that the values do not depend on the machine.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { analyze, parseOverride } from '../../src/pipeline/analyze.ts';
import { parsePipeline } from '../../src/pipeline/pipeline.ts';
import { fingerprintStages } from '../../src/plan/plan.ts';
import { canonicalJson } from '../../src/cache/fingerprint.ts';
import { stageKinds } from '../../src/stages/index.ts';

const runtime = { tfjs: '4.22.0', flavour: 'cpu' };

const minimal = `name: minimal
params:
  n: 3
stages:
  fetch: {kind: fetch}
  fetch2: {kind: fetch, with: {source: ./data.zip, sha256: "${'a'.repeat(64)}", subsets: [train, test]}}
  split: {kind: split, needs: [fetch]}
  augment: {kind: augment, needs: [split]}
  features: {kind: extract-features, needs: [split]}
  activations: {kind: extract-features, needs: [split, augment], with: {weights: none, fine_tune_at: 60, seed: 7, weights_sha256: "${'b'.repeat(64)}"}}
  local: {kind: extract-features, needs: [split], with: {weights: ./w.h5}}
  head: {kind: train-head, needs: [features]}
  fine-tune: {kind: fine-tune, needs: [activations, head], with: {fine_tune_at: 60}}
  evaluate: {kind: evaluate, needs: {model: fine-tune, data: split, features: activations, head: head}}
  evaluate-head: {kind: evaluate, needs: {model: head, data: split}}
  cmd: {run: "echo \${params.n} > out.txt", outs: [out.txt], deps: [in.txt]}
`;

const scenarios: Record<string, { file: string; args: string[] }> = {
  defaults: { file: 'mobilenet-89eb3d0.yaml', args: [] },
  shared: { file: 'mobilenet-89eb3d0.yaml', args: ['data=../shared/data/cats_and_dogs/train', 'weights=../shared/weights/mobilenet_v2_1.0_no_top_imagenet_coral.h5'] },
  trial: { file: 'mobilenet-89eb3d0.yaml', args: ['fine_tune_at=60', 'fine_tune_learning_rate=0.00003', 'activations_dtype=float16', 'flip=none', 'weights=none'] },
  minimal: { file: 'minimal', args: [] },
  onepass: { file: 'mobilenet-onepass-89eb3d0.yaml', args: [] },
};

/** Fingerprints at commit 89eb3d0 (scenario → stage → sha256). */
const at89eb3d0: Record<string, Record<string, string>> = {
  defaults: {
    fetch: 'a4202f992aa20ce31b1322586f02452d1e673b42261e9650561bd04b99e664db',
    split: '4ddcc3f9c5620b27adb78de85aeb9445841ee5e0dfafc6c5ccb5d8663d2538d0',
    augment: 'e15169d7a2ffbbff717a9337804838218be792c4faceef4cd989826fd15bef1c',
    features: 'facc900985438d96518191f0e2fd38c599c489303a330dd243f4703a2dde3ef3',
    activations: '2c09a8b7f2bfdc76d4124c9bf070e1a329d5536fe5bc7b9483b0643db7f6375c',
    head: 'dbef188f630b09bc54eb6fc54c4dfc5326ab34096d0b75e842c02948fd0071a0',
    'fine-tune': 'b9f64420cc28752d4d2dec98e8c7c518a64a9b2a47a55878f2da37b71a987641',
    evaluate: 'e65595251438485a2bc62f2701e784893d69983dd581e864acc6e442fa1d79e6',
  },
  shared: {
    fetch: '825be89f0fb6dea4bdd10c507a0c5e5263bb97e06dcff38d5b727fcef20c2bd9',
    split: '9c818da7e7a4c90621843bef480dd5d683bbdaa8d94ef3533bbcd426b18f4c28',
    augment: '3f4fa6258b8f9d1d85891a9e87f0f0d5d62c1354e228b7f18eb820fd1c474f30',
    features: 'e1a8c4c3badd0776b64af812498ab7e94a4583f9f003fb05b19ee5cace03b64e',
    activations: '921b33cc9ba7e9349c66673ccbd5d1778560dddf594f64039d66f0fffd7b694d',
    head: '71ba153367f05cb279cc72658553314213d9d1df1911a4688f138fc14c52d299',
    'fine-tune': '1fcdd6e6afee04edee0f4b2682ca33787ff5e194604e2c6a9db9f53c7ca9959f',
    evaluate: '1d1ad12221f7f810a5cdc6dea797620fceb8bc2f9cac98723766c8ea5c89a084',
  },
  trial: {
    fetch: 'a4202f992aa20ce31b1322586f02452d1e673b42261e9650561bd04b99e664db',
    split: '4ddcc3f9c5620b27adb78de85aeb9445841ee5e0dfafc6c5ccb5d8663d2538d0',
    augment: '5805ebf21c9a708a085b9da1683149b20c26fb91caaa9412769919faf7f76142',
    features: '27dee8b8f73a3ca08da883c73b28e60799c91b735e5de22a36f8489aa66c5c0e',
    activations: '5b2b47e3ee804a505734a217f3259dfa07d3aca6daa3a2298d041ee98f8939ef',
    head: 'a1746afa4bb04faf51016f2429b3d78505ec4e9118d881cc907bb34c98b37c34',
    'fine-tune': '9d8b6ab7331da0788013796a7d77a06bba99dd991e5f80ff4c4bd10420a0519f',
    evaluate: '37961b0f036d83d1b11d9043932ded07a9f874ed6c6cafa4ca31951d510c2cdd',
  },
  minimal: {
    fetch: 'a4202f992aa20ce31b1322586f02452d1e673b42261e9650561bd04b99e664db',
    fetch2: 'd646684a0f836acddba462f91c12b98256430841f7f1073133e45d762f94e6ed',
    split: '4ddcc3f9c5620b27adb78de85aeb9445841ee5e0dfafc6c5ccb5d8663d2538d0',
    augment: 'e15169d7a2ffbbff717a9337804838218be792c4faceef4cd989826fd15bef1c',
    features: '9630e9866ae15e191f0aa7a5bd44a5c9a06afc3ffdc44c7baf29e620469b2282',
    activations: '8b5551f63c2a6067260c49489a26fd56e4a641cfdb643256a98ac200bb82c8c8',
    local: 'befdb5f5907036a1d41a68fe28d42a625224abca633dc04b751a555cf2705150',
    head: 'b9e55d052f412b267bdc5204c0d8f64ae2576845d7e72fb338862caee7fd2b05',
    'fine-tune': '15edc40ba02c5a80ee51be1e61b32b44a06c0db01beaaf5afa5a4ec179d4a4db',
    evaluate: '46bb1ef352cd1764c3fc666808fdba6e531ebc258d52680f683dc7dc1278fbe7',
    'evaluate-head': '078bcbcbedcc22d205d7b574efed2d677092664b7600b50dab362ba45d95c67d',
    cmd: '8f3f729f085f08dad38e04e75735ecc95b0b042f83d67e1b7f61fee0f0aff719',
  },
  onepass: {
    fetch: 'a4202f992aa20ce31b1322586f02452d1e673b42261e9650561bd04b99e664db',
    split: '4ddcc3f9c5620b27adb78de85aeb9445841ee5e0dfafc6c5ccb5d8663d2538d0',
    augment: 'e15169d7a2ffbbff717a9337804838218be792c4faceef4cd989826fd15bef1c',
    features: '724025018c68a66cb2751664ed5ecdb77dbdbef66dc7c35b0202c0d7f37f704b',
    head: '8a6c5371734b815df82a3b1706fb5ad58a7b8b88554f79e41936b995993d34d2',
    'fine-tune': '0dc8b98c8629f1790deafd3f2cccd7c730c43fa0fd5c5dafe069a732db405347',
    evaluate: 'a6be5defdee2eba3bb5786dbff4453242d8ced11ab440d6532440535c2f93d38',
  },
};

/**
 * Deliberate version bumps since 89eb3d0, oldest first. Each names the kinds it bumped and the new
 * fingerprints of the stages it changed (those kinds' stages and everything downstream of them);
 * stages it does not list keep their earlier fingerprints.
 */
const bumps: Array<{ reason: string; kinds: string[]; fingerprints: Record<string, Record<string, string>> }> = [
  {
    reason:
      'issue 16: split 1 → 2 stores indexed sets (row numbers into hard links of the fetched pixel files) instead of ' +
      'copies of the pixels; the sets read the same, but a split entry of version 1 is not one of version 2',
    kinds: ['split'],
    fingerprints: {
      defaults: {
        split: 'c02eb0f0294bc3513ccab3e2d0b79bd43e3e477e1c5d7ecde3004dc8bce88f8e',
        augment: 'fbef08c0a8ff0b73debf539d560ebe76afff10e9d560d2e59daa8ee76e5acc73',
        features: 'd86ce7667d29939b61ebf3c3573905d08f493de4355618fe24a2fa1d0d2cb7b0',
        activations: 'e824b30cbb7151d707b962900fa542d1b92512a4d6c8860f02f1924c1af14e26',
        head: '55a3e267809977548f0474a7abf6908adeec7c9cb0cc9e1e4847c4248cbe0484',
        'fine-tune': 'd1a6aeaec0f5e33303f15818b1787852f1ee4fddba5f03792ff7fc81e486a6b9',
        evaluate: '8ba3f627c2534f19cf8ee19a9242133aee27d5ac03c64baa2cbf57d34ba94543',
      },
      shared: {
        split: '4603522a958c468d7c94f4531a4f3a2f17f6b382a74fce51acf0e72ef8671030',
        augment: 'aa43ed0cbd788243c091a873485dc84d4c9732da669487fd0185b15e803730e5',
        features: 'b9742b7e91fd490193eb0c66db9e32b118a82a46ef128197d9a30d34bd62bf6b',
        activations: '4332dca341fdbba65de79223b544c45b191d17f1255a7856d1b2d6c505ea57d1',
        head: 'f6b98687f43a3a4b0f214fa979709f0f50697dcce6f0cf413743568a51411347',
        'fine-tune': 'c173b8250f95c32a14c8bd6753b211e844a96a3d2ea420887233126be8e27f14',
        evaluate: 'c6ef54f1fc632b839d125c521662c90a52d1ab13f9d32e160a3e77152b93ed56',
      },
      trial: {
        split: 'c02eb0f0294bc3513ccab3e2d0b79bd43e3e477e1c5d7ecde3004dc8bce88f8e',
        augment: '81b25f9691f17bc8597ae7e51127884bd64619ccee54687f25e41c835de39e3c',
        features: 'c76b166c1f47e322323a5839bad676be3b3bef659957abbd245815a5242dd456',
        activations: 'd490a80811c09561eff4691677e334cc3f6d33d87957f009d73822e9670800c0',
        head: '4545dde929b19ef81eb1d54723b4d565519624833e83b8ea1ada3a0f49102e91',
        'fine-tune': '3324e8f90637a1291efea6c7fa6ac500370c15d77d49ba6fcfba3df7ec791264',
        evaluate: '842a69070f457f74bf19173c40297abcfdb704f995fdcc2ac7ce9437ca1a9121',
      },
      minimal: {
        split: 'c02eb0f0294bc3513ccab3e2d0b79bd43e3e477e1c5d7ecde3004dc8bce88f8e',
        augment: 'fbef08c0a8ff0b73debf539d560ebe76afff10e9d560d2e59daa8ee76e5acc73',
        features: 'ca1fe6d1f9b4bdc98cc6720c122e3159e94957dd053d67e519dc6814588308f8',
        activations: '1b7c6762401b01e0d95e898de766534666aeba457ef33171aa1863959068cfc7',
        local: '81865907940bc45fa4b821ca54497ab3c9a2d3f79106f9d0b8eeb5bb15b041d7',
        head: '4c4d112f56502a14efb2786448f51130d09790064972b50b02c32fd78feac138',
        'fine-tune': 'c360fe19d0e66af09f8885b1718fe189f849335f6a5ba28bc297b5885637cd80',
        evaluate: 'd46bf1939c4ff4f27b9b3b62e2d8c31eca3c8dfe505db4bf267628ef4cca9053',
        'evaluate-head': 'a83f1a0dbdfcf8ca10160a767586f6d7a239b2cd5742ee4141719d85bcb63cd9',
      },
      onepass: {
        split: 'c02eb0f0294bc3513ccab3e2d0b79bd43e3e477e1c5d7ecde3004dc8bce88f8e',
        augment: 'fbef08c0a8ff0b73debf539d560ebe76afff10e9d560d2e59daa8ee76e5acc73',
        features: 'e79ca078f25a4072de7a7a582fac06e30497f739ffe5ee52b63a98b188b63239',
        head: 'd3f5e6efc8deccb3cf59c0fb0710dbfb295f41185ee00e5f32673e5ee23e362a',
        'fine-tune': 'e587a86bade75a0cc30abbeebbb3ef43508dfd1dee1c9cdebfcb4b0eb796d586',
        evaluate: 'defc3d180b3938d48f189fdb44ff73160d03ae76ef5b4465760cf2633f9b269e',
      },
    },
  },
  {
    reason:
      'issue 16: augment 1 → 2 stores the draws of the views, not their pixels (`store: false`, the default): ' +
      'extract-features makes the views as it reads them, byte for byte the stored ones, but an augment entry of version 1 holds pixels',
    kinds: ['augment'],
    fingerprints: {
      defaults: {
        augment: 'e9df12df9371837124d09c859d15503918ff2d15c5e6f2c232b8f65f1324048a',
        features: 'bfbd50a941e694c44c53ee57547648f17ba41187e6fbc128569d1199075daf75',
        activations: '7d57ad08aba491bdfdf2fd8d7d73aa0e6fc875db3cfb80536ec9de32d3924a0b',
        head: 'b5e12bd99ee7024b843ed8276ab77e874f380cbee206e61b8910a15bdeeef9aa',
        'fine-tune': '87a6578e0d6976070a741232b4deac18d81cfa2e4dc1f9e398d01416c70737dc',
        evaluate: '2f0ba6373938a035b40942ecce47678491a15481a342a7415a28b6311c6b3298',
      },
      shared: {
        augment: 'a1845e212cca9fe51a4821a0ecd3fadcef6c813cb9c11b1b7ea2b5692157e2fe',
        features: 'f0b7cd405c0b9e629b7bb41038484d858811b299ccfd7b625e6bf349c3bff049',
        activations: '2b02573b33438188b96b587eb04636340bdf0b10470252ad06a1ba4339b339f2',
        head: '65dc243c00d48ffc6bba23f19254d18152659e31f8c2b95652909dcfe04a9bb3',
        'fine-tune': '103a546e0805c7978f78b2e67e9dcaf47105c9c29ca566ca3a1cd103cb8eb2ba',
        evaluate: 'ee3e545ef84d77b504ec7707778a0c9e11a24e7af55ec1d25187e42bf5d56444',
      },
      trial: {
        augment: 'aa56d447918c87e2170db0c770fec78d36bf5f77a52effba785b17575a63b62c',
        features: 'abde0515754ed92638b4dd66b5d2ffd6a13132d10e892fe12f3b8c4f298fcb3b',
        activations: '15f60485efb457054cab4bc7b743ccd393f4edc64b6fad4cea74fbbb4ecdc9a4',
        head: 'c65488e44dcfdb342c8361b73628e1cf2400f58f018e2eb26eb9573b26dcef5f',
        'fine-tune': 'c41d95d2eabbdf7f39a0398662cc65bd7f6c908a4683e763e071829269674587',
        evaluate: '14b009caeeb0e4aaa4fa64fa73ecca7c000f1d129c7d314cc90a0827c107791c',
      },
      minimal: {
        augment: 'e9df12df9371837124d09c859d15503918ff2d15c5e6f2c232b8f65f1324048a',
        activations: 'ad6ba3e3a81f72d7ba9a952325b2134bb098d408889ee28ca4f89ce086eae6ce',
        'fine-tune': '93738abb66a955bde4097141dad1d24636c4371e3e12a3c0beea0b7c916a05b1',
        evaluate: '540033238d06479b98e45bc06ce73fdf1655e54a8fcac5a800ace5ff3ae0d1d5',
      },
      onepass: {
        augment: 'e9df12df9371837124d09c859d15503918ff2d15c5e6f2c232b8f65f1324048a',
        features: 'd9febd5e3e592bb6968e94d206b343e10fd8cd51466f2aee464f949b665821ab',
        head: 'd55292c6805da1ab8da7b45499d16efed9b6a6fb0d94f080b0ef2da79c60d26b',
        'fine-tune': '732fa691dffb1ede2c760232f9f3e2eaa357e8a76aa920be3dfa61b072186be6',
        evaluate: 'cb97cdb1a0ac3be42165aad57b6dcb823c4e093eff4b7485d5f8461b670ffeef',
      },
    },
  },
];

/** The fingerprints expected now: 89eb3d0's with every bump applied. */
const expected: Record<string, Record<string, string>> = Object.fromEntries(
  Object.entries(at89eb3d0).map(([scenario, stages]) => [
    scenario,
    { ...stages, ...Object.assign({}, ...bumps.map((bump) => bump.fingerprints[scenario] ?? {})) },
  ]),
);

async function fingerprints(file: string, args: string[]) {
  const text = file === 'minimal' ? minimal : readFileSync(fileURLToPath(new URL(file.includes('-89eb3d0') ? `./fixtures/${file}` : `../../pipelines/${file}`, import.meta.url)), 'utf8');
  const loaded = parsePipeline(text, file, '/project/pipelines');
  assert.ok(loaded.file, JSON.stringify(loaded.diagnostics));
  const overrides = args.map((arg) => parseOverride(arg)).filter((o) => o !== undefined);
  const result = await analyze(loaded.file, { kinds: stageKinds, cwd: '/project', overrides });
  assert.ok(result.ok, JSON.stringify(!result.ok && result.diagnostics));
  const hashes = Object.fromEntries(result.value.stages.flatMap((s) => s.inputPaths).map((p) => [p, `sha256:${p}`]));
  return fingerprintStages(result.value, hashes, runtime);
}

for (const [name, { file, args }] of Object.entries(scenarios)) {
  test(`fingerprints of ${name} (${file} ${args.join(' ')}) are those of 89eb3d0 and the deliberate bumps since`, async () => {
    const stages = await fingerprints(file, args);
    assert.equal(stages.map((s) => s.stage.name), Object.keys(expected[name] ?? {}));
    for (const { stage, fingerprint, record } of stages) {
      assert.is(fingerprint, expected[name]?.[stage.name], `${stage.name}: params ${canonicalJson(record.params)}`);
    }
  });
}

test('only the stages of bumped kinds and their dependents changed, and each bump changed them all', async () => {
  for (const [name, { file, args }] of Object.entries(scenarios)) {
    const stages = await fingerprints(file, args);
    const byName = new Map(stages.map((s) => [s.stage.name, s.stage]));
    const downstreamOf = (stage: string, kinds: string[]): boolean => {
      const s = byName.get(stage)!;
      return kinds.includes(s.kindName) || s.upstream.some((n) => downstreamOf(n, kinds));
    };
    for (const { stage, fingerprint } of stages) {
      for (const bump of bumps) {
        const changed = bump.fingerprints[name]?.[stage.name] !== undefined;
        assert.is(changed, downstreamOf(stage.name, bump.kinds), `${name}: ${stage.name}`);
      }
      if (!bumps.some((b) => b.fingerprints[name]?.[stage.name])) assert.is(fingerprint, at89eb3d0[name]?.[stage.name], `${name}: ${stage.name}`);
    }
  }
});

test('the flagship in its one-pass layout shares the data stages of the 89eb3d0 layouts (fetch: also their cache)', async () => {
  for (const scenario of ['defaults', 'shared', 'trial'] as const) {
    const stages = await fingerprints('mobilenet.yaml', scenarios[scenario]!.args);
    for (const name of ['fetch', 'split', 'augment']) {
      assert.is(stages.find((s) => s.stage.name === name)?.fingerprint, expected[scenario]?.[name], `${scenario}: ${name}`);
    }
    assert.is(stages.find((s) => s.stage.name === 'fetch')?.fingerprint, at89eb3d0[scenario]?.['fetch'], `${scenario}: fetch as at 89eb3d0`);
  }
});

test.run();
