// CPU and GPU slots: a stage asks for some CPU slots ('all' = every one) and GPUs, and waits in
// FIFO order until they are free. A request larger than the machine is capped to the machine.
// GPUs are handed out by id so that a stage's child process sees only its own. The stage is told
// how many CPU slots it got (StageContext.cpus), so that a stage that computes on several threads
// of its own (augment) uses as many as it holds, and no stage runs beside it on cores it took.

/** What a stage was given: `cpus` CPU slots and these GPUs. */
export interface Granted {
  cpus: number;
  gpus: string[];
}

export interface Grant extends Granted {
  release(): void;
}

interface Waiter {
  cpu: number;
  gpu: number;
  resolve: (grant: Grant) => void;
}

export class Slots {
  private freeCpu: number;
  private readonly freeGpus: string[];
  private readonly queue: Waiter[] = [];

  constructor(
    readonly cpuCapacity: number,
    gpuIds: string[],
  ) {
    this.freeCpu = Math.max(1, cpuCapacity);
    this.freeGpus = [...gpuIds];
    this.gpuCapacity = gpuIds.length;
  }

  readonly gpuCapacity: number;

  acquire(cpu: number | 'all', gpu: number): Promise<Grant> {
    const wantCpu = cpu === 'all' ? this.cpuCapacity : Math.min(Math.max(1, cpu), this.cpuCapacity);
    // Without GPUs a stage that asks for one runs on the CPU (tfjs falls back); with GPUs it waits.
    const wantGpu = Math.min(gpu, this.gpuCapacity);
    return new Promise((resolve) => {
      this.queue.push({ cpu: Math.max(1, wantCpu), gpu: wantGpu, resolve });
      this.dispatch();
    });
  }

  private dispatch(): void {
    while (this.queue.length > 0) {
      const head = this.queue[0];
      if (!head || head.cpu > this.freeCpu || head.gpu > this.freeGpus.length) return;
      this.queue.shift();
      this.freeCpu -= head.cpu;
      const gpus = this.freeGpus.splice(0, head.gpu);
      let released = false;
      head.resolve({
        cpus: head.cpu,
        gpus,
        release: () => {
          if (released) return;
          released = true;
          this.freeCpu += head.cpu;
          this.freeGpus.push(...gpus);
          this.dispatch();
        },
      });
    }
  }
}
