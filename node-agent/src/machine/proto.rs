//! Conversions of facts and samples into the wire types of `flatrender.render.v1`.

use std::time::SystemTime;

use flatrender_proto::flatrender::render::v1 as pb;

use super::{AeInstall, AeProcess, DiskRole, DiskUsage, GpuInfo, GpuUsage, HealthSample, MachineFacts, Os};

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(at)
}

fn path_string(path: &std::path::Path) -> String {
    path.to_string_lossy().into_owned()
}

impl From<Os> for pb::OperatingSystem {
    fn from(os: Os) -> Self {
        match os {
            Os::Windows => pb::OperatingSystem::Windows,
            Os::MacOs => pb::OperatingSystem::Macos,
            Os::Linux => pb::OperatingSystem::Linux,
            Os::Other => pb::OperatingSystem::Unspecified,
        }
    }
}

impl From<DiskRole> for pb::DiskRole {
    fn from(role: DiskRole) -> Self {
        match role {
            DiskRole::Work => pb::DiskRole::Work,
            DiskRole::Cache => pb::DiskRole::Cache,
        }
    }
}

impl From<GpuInfo> for pb::GpuInfo {
    fn from(gpu: GpuInfo) -> Self {
        pb::GpuInfo {
            index: gpu.index,
            name: gpu.name,
            vendor: gpu.vendor,
            memory_bytes: gpu.memory_bytes,
            driver_version: gpu.driver_version,
        }
    }
}

impl From<AeInstall> for pb::AeInstall {
    fn from(install: AeInstall) -> Self {
        let supports_mfr = install.supports_mfr();
        // The proto's version is the marketing version without the build ("24.2.1" of
        // "24.2.1x2"); before a probe only the folder's name ("2025") is known.
        let version = match &install.build {
            Some(build) => build.split('x').next().unwrap_or(build).to_owned(),
            None => install.version.clone(),
        };
        pb::AeInstall {
            version,
            build: install.build.unwrap_or_default(),
            install_path: path_string(&install.install_dir),
            aerender_path: path_string(&install.aerender),
            script_patch_version: install.script_patch_version,
            supports_mfr,
        }
    }
}

impl From<MachineFacts> for pb::MachineFacts {
    fn from(facts: MachineFacts) -> Self {
        pb::MachineFacts {
            hostname: facts.hostname,
            os: pb::OperatingSystem::from(facts.os).into(),
            os_version: facts.os_version,
            arch: facts.arch,
            cpu_model: facts.cpu_model,
            cpu_cores: facts.cpu_cores,
            ram_bytes: facts.ram_bytes,
            gpus: facts.gpus.into_iter().map(Into::into).collect(),
            ae_installs: facts.ae_installs.into_iter().map(Into::into).collect(),
            ffmpeg_version: facts.ffmpeg_version.unwrap_or_default(),
            locale: facts.locale,
            simulated: facts.simulated,
        }
    }
}

impl From<DiskUsage> for pb::DiskUsage {
    fn from(disk: DiskUsage) -> Self {
        pb::DiskUsage {
            role: pb::DiskRole::from(disk.role).into(),
            path: path_string(&disk.path),
            total_bytes: disk.total_bytes,
            free_bytes: disk.free_bytes,
        }
    }
}

impl From<GpuUsage> for pb::GpuUsage {
    fn from(gpu: GpuUsage) -> Self {
        pb::GpuUsage {
            index: gpu.index,
            name: gpu.name,
            utilization_percent: gpu.utilization_percent,
            memory_used_bytes: gpu.memory_used_bytes,
            memory_total_bytes: gpu.memory_total_bytes,
            temperature_celsius: gpu.temperature_celsius,
        }
    }
}

impl From<AeProcess> for pb::AeProcess {
    fn from(process: AeProcess) -> Self {
        pb::AeProcess {
            pid: process.pid,
            name: process.name,
            resident_bytes: process.resident_bytes,
            cpu_percent: process.cpu_percent,
            task_id: process.task_id.unwrap_or_default(),
            started_at: process.started_at.map(timestamp),
        }
    }
}

impl From<HealthSample> for pb::NodeHealthSample {
    fn from(sample: HealthSample) -> Self {
        let ae_memory_bytes = sample.ae_memory_bytes();
        pb::NodeHealthSample {
            recorded_at: Some(timestamp(sample.recorded_at)),
            cpu_percent: sample.cpu_percent,
            memory_total_bytes: sample.memory_total_bytes,
            memory_used_bytes: sample.memory_used_bytes,
            disks: sample.disks.into_iter().map(Into::into).collect(),
            load_1m: sample.load.map(|l| l.one),
            load_5m: sample.load.map(|l| l.five),
            load_15m: sample.load.map(|l| l.fifteen),
            gpus: sample.gpus.into_iter().map(Into::into).collect(),
            ae_process_count: u32::try_from(sample.ae_processes.len()).unwrap_or(u32::MAX),
            ae_memory_bytes,
            ae_processes: sample.ae_processes.into_iter().map(Into::into).collect(),
            running_tasks: sample.tasks.running_tasks,
            slots: sample.tasks.slots,
            cache_used_bytes: sample.tasks.cache_used_bytes,
            cache_limit_bytes: sample.tasks.cache_limit_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::{LoadAverage, TaskLoad};
    use super::*;

    #[test]
    fn health_sample_fills_every_field() {
        let sample = HealthSample {
            recorded_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            cpu_percent: 42.5,
            memory_total_bytes: 64 << 30,
            memory_used_bytes: 10 << 30,
            disks: vec![DiskUsage {
                role: DiskRole::Cache,
                path: PathBuf::from("/c"),
                total_bytes: 100,
                free_bytes: 40,
            }],
            load: Some(LoadAverage { one: 1.0, five: 2.0, fifteen: 3.0 }),
            gpus: vec![GpuUsage {
                index: 0,
                name: "RTX".into(),
                utilization_percent: Some(7.0),
                memory_used_bytes: 1,
                memory_total_bytes: 2,
                temperature_celsius: None,
            }],
            ae_processes: vec![
                AeProcess {
                    pid: 10,
                    name: "AfterFX.exe".into(),
                    resident_bytes: 300,
                    cpu_percent: 150.0,
                    task_id: Some("t1".into()),
                    started_at: None,
                },
                AeProcess {
                    pid: 11,
                    name: "aerender.exe".into(),
                    resident_bytes: 20,
                    cpu_percent: 0.0,
                    task_id: None,
                    started_at: None,
                },
            ],
            tasks: TaskLoad {
                running_tasks: 1,
                slots: 2,
                cache_used_bytes: 5,
                cache_limit_bytes: 9,
                task_roots: Vec::new(),
            },
        };
        let wire = pb::NodeHealthSample::from(sample);
        assert_eq!(wire.recorded_at.map(|t| t.seconds), Some(1_800_000_000));
        assert_eq!((wire.ae_process_count, wire.ae_memory_bytes), (2, 320));
        assert_eq!(wire.ae_processes[0].task_id, "t1");
        assert_eq!(wire.ae_processes[1].task_id, "");
        assert_eq!(wire.disks[0].role, pb::DiskRole::Cache as i32);
        assert_eq!((wire.load_1m, wire.load_15m), (Some(1.0), Some(3.0)));
        assert_eq!((wire.running_tasks, wire.slots, wire.cache_used_bytes, wire.cache_limit_bytes), (1, 2, 5, 9));
    }

    #[test]
    fn ae_install_versions() {
        let mut install = AeInstall {
            version: "2024".into(),
            install_dir: PathBuf::from("/Applications/Adobe After Effects 2024"),
            aerender: PathBuf::from("/Applications/Adobe After Effects 2024/aerender"),
            build: None,
            script_patch_version: 0,
        };
        let wire = pb::AeInstall::from(install.clone());
        assert_eq!((wire.version.as_str(), wire.build.as_str(), wire.supports_mfr), ("2024", "", true));
        install.build = Some("24.2.1x2".into());
        let wire = pb::AeInstall::from(install);
        assert_eq!((wire.version.as_str(), wire.build.as_str()), ("24.2.1", "24.2.1x2"));
    }
}
